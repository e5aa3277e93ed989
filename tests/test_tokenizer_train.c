/* tests/test_tokenizer_train: `xlkv tokenizer train` in the library: a BPE vocabulary trained on text loads back
 * through xlkv_tokenizer_load, has exactly the requested size (or reports running out of merges), turns frequent words
 * into single tokens, round-trips the training text and unseen text with rare Unicode (byte fallback), is
 * deterministic, never spells a special or byte token, and refuses bad input clearly. On tinyshakespeare (when
 * present): 4096 tokens in well under a minute, round-trip, and tokens per character against the Llama vocabulary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/file.h"
#include "model/tokenizer.h"
#include "model/tokenizer_train.h"
#include "testutil.h"

/* A deterministic English-like text: sentences drawn from a small word list with an LCG. */
static char *make_text(size_t target_len, uint32_t seed) {
    static const char *const words[] = {"the",     "and",   "of",     "to",    "a",      "king",  "queen",
                                        "love",    "night", "sword",  "which", "would",  "there", "their",
                                        "brother", "thou",  "thee",   "hath",  "gentle", "noble", "Romeo",
                                        "Juliet",  "speak", "heaven", "mercy", "sorrow"};
    const size_t n_words = sizeof words / sizeof words[0];
    char *text = malloc(target_len + 64);
    assert_non_null(text);
    size_t len = 0;
    uint32_t x = seed;
    int in_sentence = 0;
    while (len < target_len) {
        x = x * 1664525u + 1013904223u;
        const char *w = words[(x >> 16) % n_words];
        len += (size_t)sprintf(text + len, "%s%s", in_sentence ? " " : "", w);
        in_sentence++;
        if (in_sentence > 4 && (x >> 8) % 5 == 0) {
            len += (size_t)sprintf(text + len, "%s", (x >> 12) % 3 ? ".\n" : ",  ");
            in_sentence = 0;
        }
    }
    text[len] = '\0';
    return text;
}

static xlkv_status train_text(const char *text, int vocab_size, const char *path, xlkv_bpe_train_stats *stats) {
    xlkv_bpe_train_options opt = {.vocab_size = vocab_size, .min_frequency = 2};
    xlkv_bpe_trainer *t = NULL;
    xlkv_status st = xlkv_bpe_trainer_create(&opt, &t);
    if (st == XLKV_OK) st = xlkv_bpe_trainer_add_text(t, text, strlen(text));
    if (st == XLKV_OK) st = xlkv_bpe_trainer_train(t, stats);
    if (st == XLKV_OK) st = xlkv_bpe_trainer_write_json(t, path);
    xlkv_bpe_trainer_free(t);
    return st;
}

/* Encodes (with BOS) and decodes back; returns the number of tokens without BOS. */
static int assert_round_trip(const xlkv_tokenizer *tok, const char *text) {
    int *ids, n;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, text, true, &ids, &n));
    char *back;
    size_t back_len;
    TU_ASSERT_OK(xlkv_tokenizer_detokenize(tok, ids, n, &back, &back_len));
    assert_int_equal(back_len, strlen(text));
    assert_memory_equal(back, text, back_len);
    free(back);
    free(ids);
    return n - 1;
}

static char *temp_json(const char *name) {
    char *dir = tu_temp_dir();
    char *path = xlkv_path_join(dir, name);
    free(dir);
    return path;
}

static void trains_loads_and_round_trips(void **state) {
    (void)state;
    char *text = make_text(40000, 7);
    char *path = temp_json("tokenizer.json");
    xlkv_bpe_train_stats stats;
    TU_ASSERT_OK(train_text(text, 400, path, &stats));
    assert_int_equal(stats.vocab_size, 400);
    assert_false(stats.ran_out);
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    assert_int_equal(xlkv_tokenizer_n_vocab(tok), 400);
    assert_int_equal(xlkv_tokenizer_bos(tok), 1);
    assert_int_equal(xlkv_tokenizer_eos(tok), 2);
    assert_string_equal(xlkv_tokenizer_piece(tok, 0), "<unk>");
    assert_string_equal(xlkv_tokenizer_piece(tok, 3), "<0x00>");
    assert_string_equal(xlkv_tokenizer_piece(tok, 258), "<0xFF>");
    /* The training text: far fewer tokens than characters. */
    int n = assert_round_trip(tok, text);
    assert_true(n * 3 < (int)strlen(text));
    /* Frequent words are single tokens (after the dummy prefix / a space). */
    static const char *const frequent[] = {"\xe2\x96\x81the", "\xe2\x96\x81king",
                                           "\xe2\x96\x81"
                                           "brother",
                                           "\xe2\x96\x81Juliet"};
    for (size_t i = 0; i < sizeof frequent / sizeof frequent[0]; i++)
        if (xlkv_tokenizer_find(tok, frequent[i]) < 259) fail_msg("'%s' is not a merged token", frequent[i]);
    int *ids, n_ids;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, "brother", false, &ids, &n_ids));
    assert_int_equal(n_ids, 1);
    assert_int_equal(ids[0], xlkv_tokenizer_find(tok, "\xe2\x96\x81"
                                                      "brother"));
    free(ids);
    /* Unseen text with characters never trained on: byte fallback, exact round trip. */
    const char *unseen = "Z\xc3\xbcrich \xe2\x80\x94 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x99\x82 na\xc3\xaf"
                         "ve\ttab\n  two  spaces ~{}";
    assert_round_trip(tok, unseen);
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, "\xf0\x9f\x99\x82", false, &ids, &n_ids));
    int n_bytes = 0;
    for (int i = 0; i < n_ids; i++) n_bytes += ids[i] >= 3 && ids[i] < 259;
    assert_int_equal(n_bytes, 4); /* the emoji's four bytes */
    free(ids);
    assert_round_trip(tok, "");
    assert_round_trip(tok, " leading and trailing spaces ");
    xlkv_tokenizer_free(tok);
    remove(path);
    free(path);
    free(text);
}

static void deterministic(void **state) {
    (void)state;
    char *text = make_text(20000, 11);
    char *a = temp_json("a.json"), *b = temp_json("b.json");
    TU_ASSERT_OK(train_text(text, 350, a, NULL));
    TU_ASSERT_OK(train_text(text, 350, b, NULL));
    char *da, *db;
    size_t na, nb;
    TU_ASSERT_OK(xlkv_read_file(a, &da, &na));
    TU_ASSERT_OK(xlkv_read_file(b, &db, &nb));
    assert_int_equal(na, nb);
    assert_memory_equal(da, db, na);
    free(da);
    free(db);
    remove(a);
    remove(b);
    free(a);
    free(b);
    free(text);
}

static void runs_out_of_merges(void **state) {
    (void)state;
    char *path = temp_json("small.json");
    xlkv_bpe_train_stats stats;
    TU_ASSERT_OK(train_text("ab ab ab abc abc", 1000, path, &stats));
    assert_true(stats.ran_out);
    assert_true(stats.vocab_size < 1000);
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    assert_int_equal(xlkv_tokenizer_n_vocab(tok), stats.vocab_size);
    assert_round_trip(tok, "ab ab ab abc abc");
    xlkv_tokenizer_free(tok);
    remove(path);
    free(path);
}

/* Text full of "<s>" and "<0x41>": no merge may produce a piece that spells a special or byte token. */
static void never_spells_special_tokens(void **state) {
    (void)state;
    char text[4096] = "";
    for (int i = 0; i < 100; i++) strcat(text, "<s><0x41></s>");
    char *path = temp_json("special.json");
    TU_ASSERT_OK(train_text(text, 600, path, NULL));
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    assert_int_equal(xlkv_tokenizer_find(tok, "<s>"), 1);
    assert_int_equal(xlkv_tokenizer_find(tok, "<0x41>"), 3 + 0x41);
    assert_round_trip(tok, text);
    xlkv_tokenizer_free(tok);
    remove(path);
    free(path);
}

static void bad_input(void **state) {
    (void)state;
    xlkv_bpe_train_options opt = {.vocab_size = 258};
    xlkv_bpe_trainer *t = NULL;
    TU_ASSERT_FAILS(xlkv_bpe_trainer_create(&opt, &t), XLKV_E_INVALID, "259");
    assert_null(t);
    opt.vocab_size = 300;
    TU_ASSERT_OK(xlkv_bpe_trainer_create(&opt, &t));
    assert_int_not_equal(xlkv_bpe_trainer_add_file(t, "/nonexistent/corpus.txt"), XLKV_OK);
    assert_non_null(strstr(xlkv_last_error(), "/nonexistent/corpus.txt"));
    TU_ASSERT_FAILS(xlkv_bpe_trainer_train(t, NULL), XLKV_E_INVALID, "no text");
    xlkv_bpe_trainer_free(t);
    /* max_chars stops reading. */
    opt.max_chars = 1000;
    TU_ASSERT_OK(xlkv_bpe_trainer_create(&opt, &t));
    char *text = make_text(5000, 3);
    TU_ASSERT_OK(xlkv_bpe_trainer_add_text(t, text, strlen(text)));
    assert_true(xlkv_bpe_trainer_full(t));
    xlkv_bpe_train_stats stats;
    TU_ASSERT_OK(xlkv_bpe_trainer_train(t, &stats));
    assert_true(stats.bytes <= 1000 && stats.bytes > 990);
    xlkv_bpe_trainer_free(t);
    free(text);
}

static double tokens_per_char(const xlkv_tokenizer *tok, const char *text, size_t len) {
    int *ids, n;
    TU_ASSERT_OK(xlkv_tokenizer_encode(tok, text, false, &ids, &n));
    free(ids);
    return (double)n / (double)len;
}

static void tinyshakespeare_4096(void **state) {
    (void)state;
    char *corpus = tu_shared_data("text/tinyshakespeare.txt");
    if (!corpus) skip();
    char *path = temp_json("shakespeare.json");
    xlkv_bpe_train_options opt = {.vocab_size = 4096};
    xlkv_bpe_trainer *t = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    TU_ASSERT_OK(xlkv_bpe_trainer_create(&opt, &t));
    TU_ASSERT_OK(xlkv_bpe_trainer_add_file(t, corpus));
    xlkv_bpe_train_stats stats;
    TU_ASSERT_OK(xlkv_bpe_trainer_train(t, &stats));
    TU_ASSERT_OK(xlkv_bpe_trainer_write_json(t, path));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    xlkv_bpe_trainer_free(t);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    assert_int_equal(stats.vocab_size, 4096);
    assert_true(seconds < 20.0);
    xlkv_tokenizer *tok;
    TU_ASSERT_OK(xlkv_tokenizer_load(path, &tok));
    char *text;
    size_t len;
    TU_ASSERT_OK(xlkv_read_file(corpus, &text, &len));
    assert_round_trip(tok, text);
    double ours = tokens_per_char(tok, text, len);
    char *llama_path = tu_shared_data("tokenizers/llama2c-tokenizer.bin");
    double llama = 0;
    if (llama_path) {
        xlkv_tokenizer *llama_tok;
        TU_ASSERT_OK(xlkv_tokenizer_load(llama_path, &llama_tok));
        llama = tokens_per_char(llama_tok, text, len);
        xlkv_tokenizer_free(llama_tok);
        free(llama_path);
    }
    printf("tinyshakespeare: 4096-token BPE trained in %.2f s (%d merges, %d "
           "characters); tokens/char %.4f (Llama 32000: %.4f)\n",
           seconds, stats.merges, stats.alphabet, ours, llama);
    assert_true(ours < 0.35);
    xlkv_tokenizer_free(tok);
    free(text);
    remove(path);
    free(path);
    free(corpus);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(trains_loads_and_round_trips),
        cmocka_unit_test(deterministic),
        cmocka_unit_test(runs_out_of_merges),
        cmocka_unit_test(never_spells_special_tokens),
        cmocka_unit_test(bad_input),
        cmocka_unit_test(tinyshakespeare_4096),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
