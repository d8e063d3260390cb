/* Submitted files, opened safely beneath input_root and streamed to curl from that descriptor. */
#ifndef COFI_INPUT_FILE_H
#define COFI_INPUT_FILE_H

#include <curl/curl.h>
#include <stddef.h>

/* A file is checked when its batch is submitted, but read later, at `distribute`: meanwhile it
 * may have been replaced by a symbolic link to a file outside input_root, or by a FIFO that
 * would block a reader for ever. So the upload opens it again here, and trusts only what it
 * opened: the path is resolved beneath root with no symbolic link anywhere on it (openat2
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or a walk of O_NOFOLLOW opens where openat2 is
 * missing), without blocking (O_NONBLOCK), and only a regular file is read. */

/* Opens rel (relative to the directory root) as above. Returns the open descriptor (the caller
 * closes it) with *size its length, or -1 with why (cap bytes) saying in one sentence what is
 * wrong with the file ("a symbolic link on its path", "not a regular file", ...). Thread-safe. */
int input_file_open(const char *root, const char *rel, long long *size, char *why, size_t cap);

/* Opens rel beneath root (input_file_open) and makes it the data of the mime part, streamed
 * by curl from that descriptor (curl_mime_data_cb, size from fstat). The descriptor is closed
 * when the part is freed (with its mime). Returns 0; -1 when the file can't be used (why says
 * why: a permanent failure of the call); -2 when out of memory (why says so: worth a retry).
 * On failure the part is left without data and nothing stays open. Thread-safe. */
int input_file_attach(curl_mimepart *part, const char *root, const char *rel, char *why,
                      size_t cap);

#endif
