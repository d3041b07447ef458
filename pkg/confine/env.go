package confine

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
)

// DefaultPath is the command's PATH unless --env or --env-file set one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// buildEnv returns the command's environment: PATH, HOME, and TERM and
// LANG where the caller has them, then the variables of each env file in
// order, then vars; a later setting of a name replaces an earlier one.
// An entry without '=' takes the caller's value (and is left out when the
// caller has none).
func buildEnv(home string, files, vars []string) ([]string, error) {
	env := []string{"PATH=" + DefaultPath, "HOME=" + home}
	for _, k := range []string{"TERM", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	set := func(kv, where string) error {
		k, v, hasValue := strings.Cut(kv, "=")
		if k == "" || strings.ContainsAny(k, " \t\x00") || strings.ContainsRune(v, 0) {
			return fmt.Errorf("%s: %q is no environment variable: want NAME=VALUE or NAME (no spaces or NUL in NAME)", where, kv)
		}
		if !hasValue {
			if v, hasValue = os.LookupEnv(k); !hasValue {
				return nil
			}
		}
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		env = append(env, k+"="+v)
		return nil
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("exec: --env-file: %w", err)
		}
		s := bufio.NewScanner(fh)
		for n := 1; s.Scan(); n++ {
			line := strings.TrimLeft(s.Text(), " \t")
			if line == "" || line[0] == '#' {
				continue
			}
			if err := set(line, fmt.Sprintf("exec: --env-file %s:%d", f, n)); err != nil {
				fh.Close()
				return nil, err
			}
		}
		err = s.Err()
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("exec: --env-file %s: %w", f, err)
		}
	}
	for _, kv := range vars {
		if err := set(kv, "exec: --env"); err != nil {
			return nil, err
		}
	}
	return env, nil
}
