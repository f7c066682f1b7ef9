#!/usr/bin/env bash
# Build (once) and cache the test control plane: one multi-call binary from
# hack/k8s (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl).
#
#   hack/build-k8s.sh          build if missing; print the directory holding the binaries
#
# The cache key is the Kubernetes version plus a hash of go.mod/go.sum/main.go,
# so editing the module rebuilds and every other run reuses the binary
# (about 6-10 minutes on 2 cores the first time, 0 s after).
# K8S_BIN, when set to a directory that already holds the three kube binaries
# (for example from an official release tarball), is used as is.
# Environment: MIG_E2E_CACHE [~/.cache/mig-extender]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
roles=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

if [ -n "${K8S_BIN:-}" ]; then
  for r in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$K8S_BIN/$r" ] || { echo "K8S_BIN=$K8S_BIN has no executable $r" >&2; exit 1; }
  done
  echo "$K8S_BIN"; exit 0
fi

version=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/k8s/go.mod")
key=$(cat "$here/k8s/go.mod" "$here/k8s/go.sum" "$here/k8s/main.go" | sha256sum | cut -c1-12)
out=${MIG_E2E_CACHE:-$HOME/.cache/mig-extender}/k8s-$version-$key
if [ -x "$out/k8s" ]; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "go is needed to build the test control plane (apt-get install golang, or set K8S_BIN)" >&2; exit 1; }
echo "building Kubernetes $version control plane into $out (one-time, several minutes)" >&2
tmp="$out.tmp.$$"; mkdir -p "$tmp"; trap 'rm -rf "$tmp"' EXIT
major=${version#v}; minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
start=$SECONDS
# The checksum database is out of reach here; go.sum (committed) pins every module's hash.
( cd "$here/k8s" && GOSUMDB=off GOFLAGS=-mod=readonly CGO_ENABLED=0 \
    go build -trimpath -ldflags "$ldflags" -o "$tmp/k8s" . )
for r in "${roles[@]}"; do ln -sf k8s "$tmp/$r"; done
rm -rf "$out"; mv "$tmp" "$out"; trap - EXIT
echo "built in $((SECONDS - start)) s" >&2
echo "$out"
