# Run as root at the start of a command whose standard input is a tar archive of tar_entry
# entries: unpacks it at / as it is (owners, modes), like Sandbox.put_archive without its cost,
# and gives what follows no input. Prints $evolve_no_tools first thing and exits 0 when the image
# lacks GNU tar or setpriv; prints tar's complaint and $evolve_unpack_failed and exits 0 when the
# archive does not unpack.
command -v tar > /dev/null 2>&1 && command -v setpriv > /dev/null 2>&1 || { echo "$evolve_no_tools"; exit 0; }
tar -x -f - -C / 2>&1 || { echo; echo "$evolve_unpack_failed"; exit 0; }
exec < /dev/null
