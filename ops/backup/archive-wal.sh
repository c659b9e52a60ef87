#!/bin/sh
# archive_command for PostgreSQL continuous archiving:
#
#     archive_command = '/usr/local/bin/archive-wal.sh %p %f /var/backups/ledger/wal'
#
# Copies one finished WAL segment (or .history / .backup file) into the archive directory so
# that it is durable before PostgreSQL is told it was archived (exit 0), and only then may
# PostgreSQL recycle it. A file already in the archive is never overwritten: the same bytes
# again (a retry after a crash between the copy and the report) is success, anything else is an
# error, so two servers archiving into one directory fail loudly instead of mixing their WAL.
# The copy goes to a temporary name first, so the archive never holds a half-written segment.
set -eu

if [ "$#" -ne 3 ]; then
    echo "usage: archive-wal.sh PATH NAME ARCHIVE_DIR  (archive_command '... %p %f DIR')" >&2
    exit 2
fi
src=$1
name=$2
dir=$3
dest=$dir/$name

if [ -e "$dest" ]; then
    if cmp -s "$src" "$dest"; then
        exit 0
    fi
    echo "archive-wal: $dest already exists and differs from $src; refusing to overwrite" >&2
    exit 1
fi

tmp=$dir/.$name.partial
cp "$src" "$tmp"
sync "$tmp"          # the segment's bytes are on disk
mv "$tmp" "$dest"
sync "$dir"          # and so is its name in the directory
