"""Score a prompt/response with libdistalign.so through ctypes (standard library only), then take training steps:
two DPO steps, one SFT step and one preference-distillation step (a soft label and the seeded KL term).

    LD_LIBRARY_PATH=path/to/lib python3 samples/python/score.py MODEL.safetensors "Call me" " Ishmael."

Prints the sequence log-prob and its float32 bits, as samples/c/score.c does, so both compare exactly with
`distalign score`. Any error comes back as a status and a message (never a crash): the script raises it.
"""
import ctypes
import struct
import sys

ABI_VERSION = 1
lib = ctypes.CDLL("libdistalign.so")
lib.distalign_abi_version.restype = ctypes.c_int32
lib.distalign_last_error.restype = ctypes.c_char_p
lib.distalign_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64)]
lib.distalign_model_free.argtypes = [ctypes.c_uint64]
lib.distalign_model_info.argtypes = [ctypes.c_uint64] + [ctypes.POINTER(ctypes.c_int32)] * 3
lib.distalign_tokenize.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
                                   ctypes.POINTER(ctypes.c_int32)]
I32P = ctypes.POINTER(ctypes.c_int32)
lib.distalign_dpo_step.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32, I32P, I32P, I32P, I32P, I32P, I32P,
                                   ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_int32, ctypes.POINTER(ctypes.c_float)]
lib.distalign_sft_step.argtypes = [ctypes.c_uint64, ctypes.c_int32, I32P, I32P, I32P, I32P,
                                   ctypes.c_float, ctypes.c_float, ctypes.c_int32, ctypes.POINTER(ctypes.c_float)]
lib.distalign_distill_step.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32, I32P, I32P, I32P, I32P, I32P, I32P,
                                       ctypes.POINTER(ctypes.c_float), ctypes.c_float, ctypes.c_float, ctypes.c_int32,
                                       ctypes.c_int32, ctypes.c_uint64, ctypes.c_float, ctypes.c_float, ctypes.c_int32,
                                       ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
lib.distalign_score.argtypes = [ctypes.c_uint64, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
                                ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.POINTER(ctypes.c_float),
                                ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]


def check(status, what):
    if status != 0:
        raise RuntimeError(f"{what}: status {status}: {lib.distalign_last_error().decode()}")


def tokenize(model, text):
    count = ctypes.c_int32()
    ids = (ctypes.c_int32 * 4096)()
    check(lib.distalign_tokenize(model, text.encode(), ids, len(ids), ctypes.byref(count)), "tokenize")
    return list(ids[:count.value])


def main(path, prompt_text, response_text):
    if lib.distalign_abi_version() != ABI_VERSION:
        raise RuntimeError(f"libdistalign ABI {lib.distalign_abi_version()}, this script {ABI_VERSION}")
    model = ctypes.c_uint64()
    check(lib.distalign_model_load(path.encode(), ctypes.byref(model)), "load")
    try:
        vocab, context, eot = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
        check(lib.distalign_model_info(model, ctypes.byref(vocab), ctypes.byref(context), ctypes.byref(eot)), "info")
        prompt = [eot.value] + tokenize(model, prompt_text)
        response = tokenize(model, response_text)
        p = (ctypes.c_int32 * len(prompt))(*prompt)
        r = (ctypes.c_int32 * len(response))(*response)
        total = ctypes.c_float()
        logprobs = (ctypes.c_float * len(response))()
        check(lib.distalign_score(model, p, len(prompt), r, len(response), ctypes.byref(total), logprobs, None), "score")
        bits = struct.unpack("<I", struct.pack("<f", total.value))[0]
        print(f"logprob {total.value!r} bits {bits:08x} tokens {len(response)}")
        # two DPO steps preferring the response to a rejected one, against a frozen copy of the model as the reference
        reference = ctypes.c_uint64()
        check(lib.distalign_model_load(path.encode(), ctypes.byref(reference)), "load reference")
        try:
            rejected = tokenize(model, " the whale")
            arrays = [prompt, [0, len(prompt)], response, [0, len(response)], rejected, [0, len(rejected)]]
            c_arrays = [(ctypes.c_int32 * len(a))(*a) for a in arrays]
            losses = []
            for step in (1, 2):
                loss = ctypes.c_float()
                check(lib.distalign_dpo_step(model, reference, 1, *c_arrays, 0.5, 1e-2, 1.0, step, ctypes.byref(loss)), "dpo step")
                losses.append(loss.value)
            print("dpo losses:", " ".join(f"{x:.6f}" for x in losses))
            # one SFT step on the response alone (the mean NLL of its tokens), step 3 of the same AdamW moments
            loss = ctypes.c_float()
            check(lib.distalign_sft_step(model, 1, c_arrays[0], c_arrays[1], c_arrays[2], c_arrays[3], 1e-2, 1.0, 3,
                                         ctypes.byref(loss)), "sft step")
            print(f"sft loss: {loss.value:.6f}")
            # one distillation step: P(response ≻ rejected) = 0.75 given as a soft label, γ = 1, and β·KL(π ‖ π0) with
            # β = 0.1 from 2 samples of at most 4 tokens, drawn with seed 7 (the same seed, the same step)
            labels = (ctypes.c_float * 1)(0.75)
            loss, kl = ctypes.c_float(), ctypes.c_float()
            check(lib.distalign_distill_step(model, reference, 1, *c_arrays, labels, 1.0, 0.1, 2, 4, 7, 1e-2, 1.0, 4,
                                             ctypes.byref(loss), ctypes.byref(kl)), "distill step")
            print(f"distill loss: {loss.value:.6f} kl: {kl.value:.6f}")
            # a soft label outside [0, 1] is an error with a message, not a crash
            labels[0] = float("nan")
            status = lib.distalign_distill_step(model, reference, 1, *c_arrays, labels, 1.0, 0.0, 0, 0, 0, 1e-2, 1.0, 5,
                                                ctypes.byref(loss), None)
            assert status == 1, status
            print("errors:", lib.distalign_last_error().decode())
        finally:
            check(lib.distalign_model_free(reference), "free reference")
        # a wrong length is an error with a message, not a crash
        status = lib.distalign_score(model, p, len(prompt), r, -1, ctypes.byref(total), None, None)
        assert status == 1, status
        print("errors:", lib.distalign_last_error().decode())
    finally:
        check(lib.distalign_model_free(model), "free")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: score.py MODEL.safetensors PROMPT RESPONSE")
    main(*sys.argv[1:])
