/* distalign.h — the C ABI of DistAlign (libdistalign.so, a NativeAOT build of src/Native).
 *
 * Every function returns a status (DISTALIGN_OK = 0, or an error code below); on an error,
 * distalign_last_error() gives a UTF-8 message for the calling thread (the same words the CLI prints), valid until
 * that thread's next call. No exception or signal crosses the boundary. Buffers are owned by the caller; lengths
 * are element counts. Models are opaque 64-bit handles; a freed or unknown handle is DISTALIGN_E_HANDLE, never a crash.
 * Scores are computed on the CPU engine with the library's default thread count; the same model, tokens and thread
 * count give the same floats as `distalign score`.
 */
#ifndef DISTALIGN_H
#define DISTALIGN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a signature or a meaning changes; check it against distalign_abi_version() at load time. */
#define DISTALIGN_ABI_VERSION 1

enum distalign_status {
    DISTALIGN_OK = 0,
    DISTALIGN_E_ARGUMENT = 1,  /* a null pointer, a negative or wrong length, a token outside the vocabulary */
    DISTALIGN_E_IO = 2,        /* a file could not be read */
    DISTALIGN_E_FORMAT = 3,    /* a file is not a valid checkpoint (the message names the file, offset and rule) */
    DISTALIGN_E_HANDLE = 4,    /* the model handle is not a live one */
    DISTALIGN_E_INTERNAL = 5   /* anything else (the message says what) */
};

typedef uint64_t distalign_model;

int32_t distalign_abi_version(void);

/* The calling thread's last error message (UTF-8, never NULL; "" after a success). */
const char *distalign_last_error(void);

/* Loads a safetensors GPT written by distalign (or a GPT-2 file); *model receives its handle. */
int32_t distalign_model_load(const char *path_utf8, distalign_model *model);

/* Frees a model; the handle is dead afterwards. */
int32_t distalign_model_free(distalign_model model);

/* Vocabulary size, context length and the <|endoftext|> token id (which starts every prompt). Any pointer may be NULL. */
int32_t distalign_model_info(distalign_model model, int32_t *vocab_size, int32_t *context, int32_t *end_of_text);

/* Token ids of UTF-8 text with the model's tokenizer: *count receives how many; at most `capacity` are written
 * (a larger count with DISTALIGN_E_ARGUMENT says the buffer is too small). */
int32_t distalign_tokenize(distalign_model model, const char *text_utf8, int32_t *ids, int32_t capacity, int32_t *count);

/* ln π(response | prompt): the prompt's tokens (start them with <|endoftext|>) then the response's. Writes the sum to
 * *sequence_logprob and, when not NULL, each response token's log-prob and entropy (response_length floats each).
 * prompt_length ≥ 1, response_length ≥ 1, prompt_length + response_length − 1 ≤ context. */
int32_t distalign_score(distalign_model model, const int32_t *prompt, int32_t prompt_length,
                        const int32_t *response, int32_t response_length,
                        float *sequence_logprob, float *token_logprobs, float *token_entropies);

/* Draws one continuation of the prompt (start it with <|endoftext|>): at most max_new_tokens tokens, stopping after
 * <|endoftext|>; temperature (0 = greedy), top_k (0 = all), top_p (1 = all); the same seed gives the same tokens as
 * `distalign sample` on the CPU. tokens needs max_new_tokens entries; *count receives how many were drawn. */
int32_t distalign_sample(distalign_model model, const int32_t *prompt, int32_t prompt_length, int32_t max_new_tokens,
                         float temperature, int32_t top_k, float top_p, uint64_t seed,
                         int32_t *tokens, int32_t capacity, int32_t *count);

/* One DPO step (the sigmoid loss with beta) of `policy` on `pairs` preference pairs against the frozen `reference` (load
 * the same file twice): zero gradients, the mean loss over the pairs and its backward, clipping of the global gradient
 * norm to max_grad_norm (0 = none), one AdamW step (β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1 on the matrices) at
 * learning_rate; `step` counts from 1 (bias correction). Pair i's prompt is prompts[prompt_offsets[i] ..
 * prompt_offsets[i+1]) (start it with <|endoftext|>), likewise chosen and rejected; each offsets array holds pairs + 1
 * non-decreasing entries starting at 0. *loss receives the mean loss before the update. A non-finite loss or gradient
 * leaves the weights unchanged and returns DISTALIGN_E_INTERNAL with the step named. */
int32_t distalign_dpo_step(distalign_model policy, distalign_model reference, int32_t pairs,
                           const int32_t *prompts, const int32_t *prompt_offsets,
                           const int32_t *chosen, const int32_t *chosen_offsets,
                           const int32_t *rejected, const int32_t *rejected_offsets,
                           float beta, float learning_rate, float max_grad_norm, int32_t step, float *loss);

/* Writes the model as a safetensors checkpoint (atomically: a temporary file renamed), readable by distalign_model_load
 * and every distalign command. */
int32_t distalign_model_save(distalign_model model, const char *path_utf8);

#ifdef __cplusplus
}
#endif

#endif /* DISTALIGN_H */
