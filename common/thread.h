/* Thread helpers. */
#ifndef COFI_THREAD_H
#define COFI_THREAD_H

/* Names the calling thread (shown by top -H, ps -L, perf and gdb); at most 15 bytes are
 * kept. Best effort: failures are ignored. */
void thread_set_name(const char *name);

#endif
