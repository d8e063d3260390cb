/* libFuzzer target: the router (method and decoded path) and the access-log escaping. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "server/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PATCH", "DELETE"};
    if (size == 0) {
        return 0;
    }
    const char *method = methods[data[0] % 5];
    char *path = malloc(size);
    if (path == NULL) {
        return 0;
    }
    memcpy(path, data + 1, size - 1);
    path[size - 1] = '\0';
    struct route_match m;
    enum route_result r = router_match(method, path, &m);
    if (r == ROUTE_FOUND) {
        (void)router_takes_query(m.route, path);
    }
    char esc[256];
    (void)log_escape(path, esc, sizeof esc);
    free(path);
    return 0;
}
