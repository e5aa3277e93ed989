/* tests/test_serve_text: the server's text handling without HTTP. serve/text_stream against a plain reference
 * (the text cut where a stop string first completes) over random texts, random token splits and random stop strings;
 * UTF-8 characters split across pieces are held back, never emitted half; an unfinished character at the end
 * becomes U+FFFD; openai_valid_utf8 replaces invalid bytes; the chat template; and serve_request_parse on the
 * stories260K vocabulary (defaults, limits, the chat stop string). */
#include <stdlib.h>
#include <string.h>

#include "serve/chat_template.h"
#include "serve/openai_response.h"
#include "serve/serve_request.h"
#include "serve/text_stream.h"
#include "testutil.h"

/* The reference: the text is cut where a stop string first completes, reading the whole text byte by byte (at one
 * end, the longest stop wins). */
static size_t reference_cut(const char *text, const char *const *stops, int n_stops, bool *found) {
    const size_t len = strlen(text);
    *found = false;
    for (size_t end = 1; end <= len; end++) {
        size_t cut = len;
        for (int s = 0; s < n_stops; s++) {
            const size_t n = strlen(stops[s]);
            if (n <= end && !strncmp(text + end - n, stops[s], n) && end - n < cut) cut = end - n;
        }
        if (cut < len) {
            *found = true;
            return cut;
        }
    }
    return len;
}

static void stop_strings_match_the_reference(void **state) {
    (void)state;
    srand(12345);
    const char alphabet[] = "ab c\n";
    for (int trial = 0; trial < 3000; trial++) {
        char text[64];
        const int len = rand() % 40;
        for (int i = 0; i < len; i++) text[i] = alphabet[rand() % 5];
        text[len] = '\0';
        char stop_text[3][8];
        const char *stops[3];
        const int n_stops = rand() % 4;
        for (int s = 0; s < n_stops; s++) {
            const int stop_len = 1 + rand() % 4;
            for (int i = 0; i < stop_len; i++) stop_text[s][i] = alphabet[rand() % 5];
            stop_text[s][stop_len] = '\0';
            stops[s] = stop_text[s];
        }
        bool want_found;
        const size_t want = reference_cut(text, stops, n_stops, &want_found);
        serve_text_stream ts;
        serve_text_init(&ts, NULL, 0, stops, n_stops);
        char out[128] = "";
        size_t out_len = 0;
        bool stopped = false;
        for (int pos = 0; pos < len && !stopped;) {
            const int draw = 1 + rand() % 4, piece = draw < len - pos ? draw : len - pos;
            stopped = serve_text_push(&ts, text + pos, (size_t)piece);
            pos += piece;
            const char *chunk;
            const size_t n = serve_text_take(&ts, &chunk);
            memcpy(out + out_len, chunk, n);
            out_len += n;
            /* what went out is final: a prefix of the reference */
            if (out_len > want || memcmp(out, text, out_len))
                fail_msg("trial %d: text '%s' (stops '%s' '%s' '%s'): emitted %zu bytes, cut at %zu", trial, text,
                         n_stops > 0 ? stops[0] : "", n_stops > 1 ? stops[1] : "", n_stops > 2 ? stops[2] : "", out_len, want);
        }
        serve_text_finish(&ts);
        const char *chunk;
        const size_t n = serve_text_take(&ts, &chunk);
        memcpy(out + out_len, chunk, n);
        out_len += n;
        if (stopped != want_found || out_len != want || memcmp(out, text, want))
            fail_msg("trial %d: text '%s' stops %d: got %zu bytes (stopped %d), want %zu (found %d)", trial, text,
                     n_stops, out_len, stopped, want, want_found);
        serve_text_free(&ts);
    }
}

static void utf8_is_never_split(void **state) {
    (void)state;
    serve_text_stream ts;
    serve_text_init(&ts, NULL, 0, NULL, 0);
    const char *chunk;
    serve_text_push(&ts, "caf\xC3", 4);
    assert_int_equal(serve_text_take(&ts, &chunk), 3);
    assert_memory_equal(chunk, "caf", 3);
    serve_text_push(&ts, "\xA9 ", 2);
    assert_int_equal(serve_text_take(&ts, &chunk), 3);
    assert_memory_equal(chunk, "\xC3\xA9 ", 3);
    /* a 4-byte character one byte at a time */
    const char emoji[] = "\xF0\x9F\x98\x80";
    for (int i = 0; i < 3; i++) {
        serve_text_push(&ts, emoji + i, 1);
        assert_int_equal(serve_text_take(&ts, &chunk), 0);
    }
    serve_text_push(&ts, emoji + 3, 1);
    assert_int_equal(serve_text_take(&ts, &chunk), 4);
    assert_memory_equal(chunk, emoji, 4);
    /* an unfinished character at the end becomes U+FFFD */
    serve_text_push(&ts, "x\xE2\x82", 3);
    assert_int_equal(serve_text_take(&ts, &chunk), 1);
    serve_text_finish(&ts);
    assert_int_equal(serve_text_take(&ts, &chunk), 3);
    assert_memory_equal(chunk, "\xEF\xBF\xBD", 3);
    serve_text_free(&ts);
}

static void stop_string_held_back_then_released(void **state) {
    (void)state;
    const char *stops[] = {"\nUser:"};
    serve_text_stream ts;
    serve_text_init(&ts, NULL, 0, stops, 1);
    const char *chunk;
    serve_text_push(&ts, "Hello\nUs", 8);
    assert_int_equal(serve_text_take(&ts, &chunk), 5); /* "\nUs" may start the stop string */
    serve_text_push(&ts, "ually", 5);                   /* it did not */
    assert_int_equal(serve_text_take(&ts, &chunk), 8);
    assert_memory_equal(chunk, "\nUsually", 8);
    assert_true(serve_text_push(&ts, "\nUser: hi", 9));
    serve_text_finish(&ts);
    assert_int_equal(serve_text_take(&ts, &chunk), 0);
    assert_string_equal(ts.text, "Hello\nUsually");
    serve_text_free(&ts);
}

static void invalid_utf8_is_replaced(void **state) {
    (void)state;
    char *s = openai_valid_utf8("a\xC3\xA9" "b\xFF" "c\xC0\xAF" "d\xED\xA0\x80" "e\xF0\x9F\x98", 16);
    assert_string_equal(s, "a\xC3\xA9" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD"
                           "d\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "e\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    free(s);
}

static void chat_template_renders_roles(void **state) {
    (void)state;
    const serve_chat_role roles[] = {SERVE_ROLE_SYSTEM, SERVE_ROLE_USER, SERVE_ROLE_ASSISTANT, SERVE_ROLE_USER};
    const char *contents[] = {"Be brief.", "Hi", "Hello!", "A story"};
    char *text = serve_chat_render(roles, contents, 4);
    assert_string_equal(text, "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: A story\nAssistant:");
    free(text);
}

static void request_limits_and_defaults(void **state) {
    (void)state;
    char *path = tu_shared_data("models/stories260K/tok512.bin");
    if (!path) skip();
    xlkv_tokenizer *tok = NULL;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    serve_request_limits limits = {.tokenizer = tok, .model_name = "m", .n_ctx = 32, .default_seed_counter = 77};
    serve_request r;
    serve_error e;
    const char *ok = "{\"prompt\":\"Once upon a time\"}";
    assert_true(serve_request_parse(ok, strlen(ok), false, &limits, &r, &e));
    assert_int_equal(r.n_prompt, 5);
    assert_int_equal(r.prompt[0], 1);     /* BOS */
    assert_int_equal(r.max_tokens, 16);   /* OpenAI's default for completions */
    assert_true(r.sampling.temperature == 1.0f && r.sampling.top_p == 1.0f && r.sampling.top_k == 0);
    assert_int_equal(r.sampling.seed, 77);
    serve_request_free(&r);
    const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"stop\":\"x\"}";
    assert_true(serve_request_parse(chat, strlen(chat), true, &limits, &r, &e));
    assert_int_equal(r.n_stops, 2);
    assert_string_equal(r.stops[1], SERVE_CHAT_STOP);
    assert_int_equal(r.max_tokens, 32 - r.n_prompt); /* chat: until the end of the context */
    serve_request_free(&r);
    const char *too_many = "{\"prompt\":\"Once upon a time\",\"max_tokens\":28}";
    assert_false(serve_request_parse(too_many, strlen(too_many), false, &limits, &r, &e));
    assert_int_equal(e.http_status, 400);
    assert_string_equal(e.code, "context_length_exceeded");
    assert_string_equal(e.param, "max_tokens");
    const char *fits = "{\"prompt\":\"Once upon a time\",\"max_tokens\":27}";
    assert_true(serve_request_parse(fits, strlen(fits), false, &limits, &r, &e));
    serve_request_free(&r);
    const char *trailing = "{\"prompt\":\"x\"} {}";
    assert_false(serve_request_parse(trailing, strlen(trailing), false, &limits, &r, &e));
    assert_int_equal(e.http_status, 400);
    xlkv_tokenizer_free(tok);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stop_strings_match_the_reference), cmocka_unit_test(utf8_is_never_split),
        cmocka_unit_test(stop_string_held_back_then_released), cmocka_unit_test(invalid_utf8_is_replaced),
        cmocka_unit_test(chat_template_renders_roles), cmocka_unit_test(request_limits_and_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
