/* score.c — load a DistAlign checkpoint through the C ABI and score a prompt/response.
 *
 *   cc -O2 -Iinclude samples/c/score.c -Lpath/to/lib -ldistalign -o score
 *   LD_LIBRARY_PATH=path/to/lib ./score MODEL.safetensors "Call me" " Ishmael."
 *
 * Prints the sequence log-prob as a decimal and as its float32 bits, so a caller can compare it exactly with
 * `distalign score`, a seeded sample, and the loss of one SFT step on the prompt/response. Exits 1 with the library's
 * message on any error. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include "distalign.h"

static int fail(const char *what)
{
    fprintf(stderr, "score: %s: %s\n", what, distalign_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: score MODEL.safetensors PROMPT RESPONSE\n");
        return 2;
    }
    if (distalign_abi_version() != DISTALIGN_ABI_VERSION) {
        fprintf(stderr, "score: libdistalign ABI %d, header %d\n", distalign_abi_version(), DISTALIGN_ABI_VERSION);
        return 1;
    }
    distalign_model model;
    if (distalign_model_load(argv[1], &model) != DISTALIGN_OK) return fail("load");
    int32_t vocab, context, eot;
    if (distalign_model_info(model, &vocab, &context, &eot) != DISTALIGN_OK) return fail("info");

    int32_t prompt[1024], response[1024], n;
    prompt[0] = eot;   /* every prompt starts at <|endoftext|> */
    if (distalign_tokenize(model, argv[2], prompt + 1, 1023, &n) != DISTALIGN_OK) return fail("tokenize prompt");
    int32_t prompt_length = n + 1, response_length;
    if (distalign_tokenize(model, argv[3], response, 1024, &response_length) != DISTALIGN_OK) return fail("tokenize response");

    float sum, token_logprobs[1024], token_entropies[1024];
    if (distalign_score(model, prompt, prompt_length, response, response_length, &sum, token_logprobs, token_entropies) != DISTALIGN_OK)
        return fail("score");
    uint32_t bits;
    memcpy(&bits, &sum, sizeof bits);
    printf("logprob %.9g bits %08x tokens %d first_token %.9g entropy %.9g\n", sum, bits, response_length, token_logprobs[0], token_entropies[0]);

    int32_t drawn[8], drawn_count;   /* a seeded continuation of the prompt, as `distalign sample --seed 7` draws it */
    if (distalign_sample(model, prompt, prompt_length, 8, 1.0f, 0, 1.0f, 7, drawn, 8, &drawn_count) != DISTALIGN_OK) return fail("sample");
    printf("sampled %d tokens:", drawn_count);
    for (int i = 0; i < drawn_count; i++) printf(" %d", drawn[i]);
    printf("\n");

    /* one SFT step on the prompt/response (the mean NLL of the response's tokens, clipping, AdamW): the loss before it */
    int32_t prompt_offsets[2] = {0, prompt_length}, response_offsets[2] = {0, response_length};
    float sft_loss;
    if (distalign_sft_step(model, 1, prompt, prompt_offsets, response, response_offsets, 1e-2f, 1.0f, 1, &sft_loss) != DISTALIGN_OK)
        return fail("sft step");
    printf("sft loss %.9g (-logprob / tokens, before the step)\n", sft_loss);

    /* bad input returns an error, never a crash */
    if (distalign_score(model, NULL, 1, response, response_length, &sum, NULL, NULL) != DISTALIGN_E_ARGUMENT) return fail("NULL prompt accepted");
    if (distalign_model_free(model) != DISTALIGN_OK) return fail("free");
    if (distalign_model_free(model) != DISTALIGN_E_HANDLE) return fail("double free accepted");
    printf("errors: %s\n", distalign_last_error());
    return 0;
}
