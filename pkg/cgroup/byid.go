package cgroup

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// fileIDKernfs is the file handle type of kernfs (FILEID_KERNFS): a cgroup
// v2 directory's handle is its 64-bit cgroup id.
const fileIDKernfs = 0xfe

// PathByID returns the directory of the live cgroup whose id is id (as
// sock_diag, bpf_get_current_cgroup_id and ID give it), without a walk of
// the hierarchy: open_by_handle_at with the id as kernfs file handle, on
// the cgroup v2 file system that dir (any directory on it) is on. A cgroup
// removed since — its sockets and other references keep its id alive —
// is an error wrapping unix.ESTALE. It needs CAP_DAC_READ_SEARCH.
func PathByID(dir string, id uint64) (string, error) {
	mfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("find cgroup %d: %w", id, err)
	}
	defer unix.Close(mfd)
	h := make([]byte, 8)
	binary.NativeEndian.PutUint64(h, id)
	fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(fileIDKernfs, h), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("find cgroup %d: %w", id, err)
	}
	defer unix.Close(fd)
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("find cgroup %d: %w", id, err)
	}
	return p, nil
}
