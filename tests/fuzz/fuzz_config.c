/* libFuzzer target: the configuration file parser (and the stage counts it feeds nothing to). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/stages.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    struct cofi_config cfg;
    struct cofi_err err;
    if (config_parse(text, &cfg, &err) == 0) {
        config_free(&cfg);
    }
    /* Progress rows (stage, status, count) as the database hands them over. */
    if (size >= 10) {
        struct stage_counts c[STAGE_COUNT];
        memset(c, 0, sizeof c);
        for (size_t i = 0; i + 10 <= size; i += 10) {
            int64_t n;
            memcpy(&n, data + i + 2, sizeof n);
            stage_counts_add(c, (int8_t)data[i], (int8_t)data[i + 1], n);
        }
    }
    free(text);
    return 0;
}
