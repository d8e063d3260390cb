/* Thread helpers. pthread_setname_np is a GNU extension. */
#define _GNU_SOURCE
#include "common/thread.h"

#include <pthread.h>
#include <string.h>

void thread_set_name(const char *name)
{
    char n[16];
    strncpy(n, name, sizeof n - 1);
    n[sizeof n - 1] = '\0';
    (void)pthread_setname_np(pthread_self(), n);
}
