# Sourced by the scripts that run podman on this kind of machine: runc, since crun
# refuses its hybrid cgroups, and no default ulimits, which its sandbox refuses to set.
mkdir -p "$PWD/.cache/podman"
if [ ! -f "$PWD/.cache/podman/containers.conf" ]; then
  printf '[containers]\ndefault_ulimits = []\n' > "$PWD/.cache/podman/containers.conf"
fi
export CONTAINERS_CONF="$PWD/.cache/podman/containers.conf"
pod() { podman --runtime runc "$@"; }
