/* distalign.h — the C ABI of DistAlign (libdistalign.so, a NativeAOT build of src/Native).
 *
 * Every function returns a status (DISTALIGN_OK = 0, or an error code below); on an error,
 * distalign_last_error() gives a UTF-8 message for the calling thread (the same words the CLI prints), valid until
 * that thread's next call. No exception or signal crosses the boundary. Buffers are owned by the caller; lengths
 * are element counts. Models are opaque 64-bit handles; a freed or unknown handle is DISTALIGN_E_HANDLE, never a crash.
 * Scores are computed on the CPU engine with the library's default thread count; the same model, tokens and thread
 * count give the same floats as `distalign score`. The training steps (SFT, DPO, PMLE, distillation) run the managed
 * objectives on the same engine: the same losses and weights as a .NET host's step, bit for bit.
 *
 * Token batches are flat arrays with offsets: list i of `values` is values[offsets[i] .. offsets[i+1]); `offsets` holds
 * count + 1 entries, offsets[0] = 0, and each list has 1 to context tokens (so the last offset is the array's length).
 * Every offset is checked before a token is read: a wrong one is DISTALIGN_E_ARGUMENT naming the array, never a read past it.
 */
#ifndef DISTALIGN_H
#define DISTALIGN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a signature or a meaning changes; check it against distalign_abi_version() at load time. Adding a function
 * does not bump it: a library older than the header lacks the newer functions (the dynamic linker, or ctypes, says which). */
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
 * learning_rate; `step` counts from 1 (bias correction; the AdamW moments are the model's, shared by all the step
 * functions). Pair i's prompt is prompts[prompt_offsets[i] .. prompt_offsets[i+1]) (start it with <|endoftext|>), likewise
 * chosen and rejected; each offsets array holds pairs + 1 entries (see the top of this file); prompt + the longer response
 * − 1 ≤ context. *loss receives the mean loss before the update. A non-finite loss or gradient leaves the weights
 * unchanged and returns DISTALIGN_E_INTERNAL with the step named. */
int32_t distalign_dpo_step(distalign_model policy, distalign_model reference, int32_t pairs,
                           const int32_t *prompts, const int32_t *prompt_offsets,
                           const int32_t *chosen, const int32_t *chosen_offsets,
                           const int32_t *rejected, const int32_t *rejected_offsets,
                           float beta, float learning_rate, float max_grad_norm, int32_t step, float *loss);

/* One SFT step of `model` on `sequences` (prompt, response) sequences: the mean negative log-likelihood over all the
 * response tokens of the batch (prompt tokens are context only and carry no loss; a long response weighs by its length),
 * its backward, clipping and one AdamW step as in distalign_dpo_step. Sequence i's prompt is prompts[prompt_offsets[i] ..
 * prompt_offsets[i+1]) (start it with <|endoftext|>), its response responses[response_offsets[i] .. response_offsets[i+1]);
 * prompt + response − 1 ≤ context. *loss receives the mean token loss before the update. */
int32_t distalign_sft_step(distalign_model model, int32_t sequences,
                           const int32_t *prompts, const int32_t *prompt_offsets,
                           const int32_t *responses, const int32_t *response_offsets,
                           float learning_rate, float max_grad_norm, int32_t step, float *loss);

/* One preference-MLE step of `policy` on `pairs` pairs (arrays as in distalign_dpo_step): the mean over the pairs of
 * −ln σ(γ·[ln π(chosen) − ln π(rejected)]) (no reference in this term), plus, when kl_beta > 0, kl_beta·KL(π ‖ π0)
 * estimated from kl_samples (2 to 1024) fresh samples of at most kl_max_tokens (1 to context) tokens per distinct prompt,
 * stopping after <|endoftext|>, with a leave-one-out score-function gradient. The samples are drawn from `policy` with
 * `seed` (sample j of distinct prompt q from Philox stream k·q + j): the same seed gives the same step. `reference` is the
 * frozen π0 of the KL term (load the file twice); 0 = none, allowed when kl_beta is 0. Clipping and AdamW as in
 * distalign_dpo_step. *loss receives the mean loss (the KL term included) before the update; *kl, when not NULL, the KL
 * estimate (0 without the term). */
int32_t distalign_pmle_step(distalign_model policy, distalign_model reference, int32_t pairs,
                            const int32_t *prompts, const int32_t *prompt_offsets,
                            const int32_t *chosen, const int32_t *chosen_offsets,
                            const int32_t *rejected, const int32_t *rejected_offsets,
                            float gamma, float kl_beta, int32_t kl_samples, int32_t kl_max_tokens, uint64_t seed,
                            float learning_rate, float max_grad_norm, int32_t step, float *loss, float *kl);

/* One preference-distillation step of `policy` on `pairs` pairs with given soft labels: labels[i] = P(first_i ≻ second_i),
 * each in [0, 1] (a NaN or one outside is DISTALIGN_E_ARGUMENT). The loss is the mean over the pairs of
 * −[p·ln σ(z) + (1 − p)·ln σ(−z)], z = γ·[ln π(first) − ln π(second)] (its minimum is at σ(z) = p), plus the optional
 * KL term of distalign_pmle_step (same kl_beta, kl_samples, kl_max_tokens, seed and reference). Arrays, clipping, AdamW
 * and the outputs as in distalign_pmle_step. */
int32_t distalign_distill_step(distalign_model policy, distalign_model reference, int32_t pairs,
                               const int32_t *prompts, const int32_t *prompt_offsets,
                               const int32_t *first, const int32_t *first_offsets,
                               const int32_t *second, const int32_t *second_offsets, const float *labels,
                               float gamma, float kl_beta, int32_t kl_samples, int32_t kl_max_tokens, uint64_t seed,
                               float learning_rate, float max_grad_norm, int32_t step, float *loss, float *kl);

/* Writes the model as a safetensors checkpoint (atomically: a temporary file renamed), readable by distalign_model_load
 * and every distalign command. */
int32_t distalign_model_save(distalign_model model, const char *path_utf8);

#ifdef __cplusplus
}
#endif

#endif /* DISTALIGN_H */
