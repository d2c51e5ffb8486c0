#!/bin/sh
# Runs "$@" (a program's interpreter) in FOLDER, cut off from the machine. training/sandbox.py starts it
# under `unshare --pid --fork --kill-child --mount-proc --net --mount` (and --user --map-root-user where it
# is not root): its own process numbers (nothing outside can be signalled, and all of it dies with it), no
# network but a loopback that is down, and a mount namespace of its own, where every mount turns read-only,
# /tmp, /var/tmp, /run and /dev/shm become empty (no host socket to connect to), FOLDER is made in that
# /tmp, and the program then runs without any capability, so that it cannot mount anything back.
# usage: sandbox.sh FOLDER BYTES COMMAND...
folder=$1 size=$2
shift 2
mount --make-rprivate / || exit 97
awk '{ print $2 }' /proc/self/mounts | while read -r point; do
  mount -o remount,bind,ro "$point" 2>/dev/null
done
for scratch in /tmp /var/tmp /run /dev/shm; do
  if [ -d "$scratch" ]; then mount -t tmpfs -o "size=$size,mode=1777" tmpfs "$scratch" || exit 97; fi
done
mkdir -p "$folder" && cd "$folder" || exit 97
exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@"
