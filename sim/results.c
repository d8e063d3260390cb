/* Deterministic hashing and the stage results every worker returns, from (seed, call_id). */
#include "sim/sim.h"

#include <stdio.h>

/* Salts keep the draws of different results independent of each other. */
enum {
    SALT_DENOISE = 11,
    SALT_IVR = 12,
    SALT_LID = 13,
    SALT_STT = 14,
    SALT_LLM2 = 15,
};

#define TRANSCRIPT_MAX (SIM_JSON_BODY_MAX + 256)

static const char *const languages[] = {"en", "de", "fr", "es", "it"};

/* What the caller of a call talks about; stt, llm1 and llm2 tell the same story. */
struct story {
    const char *before; /* the sentence: "call <id>: " before, order number, after */
    const char *after;
    const char *sentiment;
    const char *topics[2];
    const char *category;
    const char *action; /* followed by the order number */
};

static const struct story stories[] = {
    {"hello, I am calling about order ",
     "",
     "neutral",
     {"orders", "status"},
     "order_status",
     "send the status of order "},
    {"hi, my order ",
     " has not arrived yet",
     "negative",
     {"delivery", "complaint"},
     "delivery_issue",
     "trace the parcel of order "},
    {"good morning, I would like to return order ",
     "",
     "neutral",
     {"returns", "refund"},
     "return_request",
     "send a return label for order "},
    {"thank you, order ",
     " arrived and works fine",
     "positive",
     {"delivery", "feedback"},
     "feedback",
     "close the ticket of order "},
    {"hello, the invoice for order ",
     " is wrong",
     "negative",
     {"billing", "invoice"},
     "billing_issue",
     "correct the invoice of order "},
};

#define NSTORIES (sizeof stories / sizeof stories[0])

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t sim_hash(uint64_t seed, const char *s, uint64_t salt, uint64_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ mix64(seed);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        h ^= *p;
        h *= 0x100000001b3ULL;
    }
    return mix64(h ^ mix64(salt ^ mix64(n)));
}

double sim_hash_unit(uint64_t h)
{
    return (double)(h >> 11) / 9007199254740992.0; /* 2^53 */
}

static const struct story *story_of(uint64_t seed, const char *call_id, unsigned *order)
{
    uint64_t h = sim_hash(seed, call_id, SALT_STT, 0);
    *order = 1000U + (unsigned)((h >> 8) % 90000U);
    return &stories[h % NSTORIES];
}

static json_t *result_denoise(uint64_t seed, const char *call_id)
{
    uint64_t h = sim_hash(seed, call_id, SALT_DENOISE, 0);
    double snr = (double)(800 + h % 2400) / 100.0;
    return json_pack("{s:b, s:f}", "denoised", 1, "snr_db", snr);
}

static json_t *result_ivr(uint64_t seed, const char *call_id)
{
    uint64_t h = sim_hash(seed, call_id, SALT_IVR, 0);
    return json_pack("{s:b, s:I}", "ivr_detected", (int)(h & 1), "segments",
                     (json_int_t)(1 + (h >> 8) % 6));
}

static const char *language_of(uint64_t seed, const char *call_id)
{
    uint64_t h = sim_hash(seed, call_id, SALT_LID, 0);
    return languages[h % (sizeof languages / sizeof languages[0])];
}

static size_t count_words(const char *s)
{
    size_t words = 0;
    bool in_word = false;
    for (; *s != '\0'; s++) {
        bool space = (*s == ' ');
        if (!space && !in_word) {
            words++;
        }
        in_word = !space;
    }
    return words;
}

static json_t *result_stt(uint64_t seed, const char *call_id)
{
    unsigned order = 0;
    const struct story *st = story_of(seed, call_id, &order);
    struct buf text;
    buf_init(&text, TRANSCRIPT_MAX);
    if (buf_printf(&text, "call %s: %s%u%s", call_id, st->before, order, st->after) != 0) {
        buf_free(&text);
        return NULL;
    }
    json_t *out =
        json_pack("{s:s, s:s, s:I}", "transcript", text.data, "language",
                  language_of(seed, call_id), "words", (json_int_t)count_words(text.data));
    buf_free(&text);
    return out;
}

static json_t *result_llm1(uint64_t seed, const char *call_id)
{
    unsigned order = 0;
    const struct story *st = story_of(seed, call_id, &order);
    struct buf summary;
    buf_init(&summary, TRANSCRIPT_MAX);
    if (buf_printf(&summary, "The caller of call %s talked about order %u (%s, %s).", call_id,
                   order, st->topics[0], st->topics[1]) != 0) {
        buf_free(&summary);
        return NULL;
    }
    json_t *out = json_pack("{s:s, s:s, s:[s,s]}", "summary", summary.data, "sentiment",
                            st->sentiment, "topics", st->topics[0], st->topics[1]);
    buf_free(&summary);
    return out;
}

static json_t *result_llm2(uint64_t seed, const char *call_id)
{
    unsigned order = 0;
    const struct story *st = story_of(seed, call_id, &order);
    uint64_t h = sim_hash(seed, call_id, SALT_LLM2, 0);
    char action[128];
    snprintf(action, sizeof action, "%s%u", st->action, order);
    double score = (double)(h % 1000) / 1000.0;
    return json_pack("{s:s, s:f, s:[s]}", "category", st->category, "score", score, "action_items",
                     action);
}

json_t *sim_result_new(enum sim_ep ep, uint64_t seed, const char *call_id)
{
    switch (ep) {
    case SIM_EP_DENOISE:
        return result_denoise(seed, call_id);
    case SIM_EP_IVR:
        return result_ivr(seed, call_id);
    case SIM_EP_LID:
        return json_pack("{s:s}", "language", language_of(seed, call_id));
    case SIM_EP_STT:
        return result_stt(seed, call_id);
    case SIM_EP_LLM1:
        return result_llm1(seed, call_id);
    case SIM_EP_LLM2:
        return result_llm2(seed, call_id);
    case SIM_EP_UPLOAD:
    case SIM_EP_COUNT:
        break;
    }
    return NULL;
}
