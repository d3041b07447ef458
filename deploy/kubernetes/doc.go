// Package kubernetes holds l3iso's Kubernetes manifests (l3iso.yaml: a
// DaemonSet with its ConfigMap, service account and role) and the image
// they run (Dockerfile). Kubernetes cannot run on l3iso's development
// machines; manifests_test.go checks what can be checked without it: the
// manifests' structure, the policy and network configuration they carry,
// and the node script's syntax.
package kubernetes
