"""Compares our tokenizer with Hugging Face `tokenizers` on the default model's vocabulary.

The reference is built independently from the GGUF's tokens and merges (read with the `gguf` package):
a BPE model, the qwen2 split regex followed by a regex-free ByteLevel step, the ByteLevel decoder and the
control / user-defined tokens as special added tokens. Every string of tests/fixtures/tokenizer-strings.json
is encoded by `test-tokenizer --encode` (GGUF path) and by the reference; the ids must match and the
reference must decode our ids back to the input. The reference is then saved as tokenizer.json (with
[a, b] merges and again with "a b" merges) and our JSON loader must give the same ids.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def build_reference(model_path):
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    r = gguf.GGUFReader(model_path)
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    merges = [tuple(m.split(" ", 1)) for m in field_strings(r, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token strings"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t in (3, 4)]
    tok.add_special_tokens(specials)
    for i, t in enumerate(types):
        if t in (3, 4):
            assert tok.token_to_id(tokens[i]) == i, tokens[i]
    return tok


def run_encode(binary, model, strings):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for s in strings:
            f.write(json.dumps(s) + "\n")
        path = f.name
    try:
        with open(path, "rb") as inp:
            p = subprocess.run([binary, "--encode", model], stdin=inp, capture_output=True, timeout=600)
    finally:
        os.unlink(path)
    if p.returncode != 0:
        raise RuntimeError("%s --encode %s failed (%d): %s" % (binary, model, p.returncode, p.stderr.decode()[-500:]))
    lines = p.stdout.decode().splitlines()
    if len(lines) != len(strings):
        raise RuntimeError("expected %d output lines, got %d" % (len(strings), len(lines)))
    return [json.loads(l) for l in lines]


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", default=os.environ.get("METALLIC_MODEL",
                                                      "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    args = ap.parse_args()
    binary = os.path.join(args.build, "tests", "test-tokenizer")
    if not os.path.exists(args.model):
        print("skip tokenizer: model %s absent" % args.model)
        print("0 passed, 0 failed, 1 skipped")
        return 0
    if not os.path.exists(binary):
        print("FAIL tokenizer: %s not built" % binary)
        print("0 passed, 1 failed, 0 skipped")
        return 1
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "fixtures", "tokenizer-strings.json"), encoding="utf-8") as f:
        strings = json.load(f)

    ref = build_reference(args.model)
    want = [ref.encode(s, add_special_tokens=False).ids for s in strings]
    passed = failed = 0

    ours = run_encode(binary, args.model, strings)
    for s, a, b in zip(strings, ours, want):
        label = json.dumps(s, ensure_ascii=True)
        label = label if len(label) <= 60 else label[:57] + "..."
        back = ref.decode(a, skip_special_tokens=False)
        if a == b and back == s:
            passed += 1
            print("ok   gguf %s (%d ids)" % (label, len(a)))
        else:
            failed += 1
            i = first_diff(a, b)
            print("FAIL gguf %s: first difference at %d: ours %s, reference %s%s" % (
                label, i, a[i:i + 4], b[i:i + 4], "" if back == s else "; decodes to %r" % back[:60]))

    # The same vocabulary as tokenizer.json, with both merge spellings.
    jpath = os.path.join(args.build, "tokenizer-ref.json")
    ref.save(jpath)
    with open(jpath, encoding="utf-8") as f:
        j = json.load(f)
    merges = j["model"]["merges"]
    if merges and isinstance(merges[0], list):
        j["model"]["merges"] = [" ".join(m) for m in merges]
        other = "strings"
    else:
        j["model"]["merges"] = [m.split(" ", 1) for m in merges]
        other = "pairs"
    jpath2 = os.path.join(args.build, "tokenizer-ref-%s.json" % other)
    with open(jpath2, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    for name, path in (("tokenizer.json", jpath), ("tokenizer.json (%s merges)" % other, jpath2)):
        got = run_encode(binary, path, strings)
        bad = [(s, a, b) for s, a, b in zip(strings, got, want) if a != b]
        if not bad:
            passed += 1
            print("ok   %s: %d strings match" % (name, len(strings)))
        else:
            failed += 1
            s, a, b = bad[0]
            i = first_diff(a, b)
            print("FAIL %s: %d strings differ; first %r at %d: ours %s, reference %s" % (
                name, len(bad), s[:40], i, a[i:i + 4], b[i:i + 4]))

    print("%d passed, %d failed, 0 skipped" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
