"""Compares our tokenizer with Hugging Face `tokenizers` on the default model's vocabulary.

The reference is built independently from the GGUF's tokens and merges (read with a minimal GGUF metadata reader written here):
a BPE model, the qwen2 split regex followed by a regex-free ByteLevel step, the ByteLevel decoder and the
control / user-defined tokens as special added tokens. Every string of tests/fixtures/tokenizer-strings.json
(and 200 seeded random code point mixes) is encoded by `test-tokenizer --encode` (GGUF path) and by the reference; the ids must match and the
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


def read_gguf_metadata(path):
    """Only the key/value section of a GGUF file (the `gguf` package's reader takes ~40 s on a 150k-token
    vocabulary, this takes a second); the layout is the published GGUF v2/v3 one."""
    import struct

    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # the metadata of any model we test fits well within this
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        v = data[pos:pos + n].decode("utf-8")
        pos += n
        return v

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("<I"), take("<Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    assert data[:4] == b"GGUF", "not a GGUF file"
    pos = 4
    take("<I")
    take("<Q")
    n_kv = take("<Q")
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("<I"))
    return kv


def build_reference(model_path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kv = read_gguf_metadata(model_path)
    tokens = kv["tokenizer.ggml.tokens"]
    types = kv["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in kv["tokenizer.ggml.merges"]]
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


def random_strings(n, seed):
    """Seeded random mixes of code points from every corner the pre-tokenizer distinguishes: letters of
    many scripts, combining marks, numbers (Nd/Nl/No), Unicode spaces and line breaks, format characters,
    emoji, contraction fragments, and any assigned code point."""
    import random
    import unicodedata

    rng = random.Random(seed)
    assigned = []
    while len(assigned) < 4000:
        c = rng.randrange(1, 0x110000)
        if unicodedata.category(chr(c)) not in ("Cn", "Cs"):
            assigned.append(chr(c))
    pools = [
        [chr(c) for c in range(0x20, 0x7F)],
        list(" \t\n\r\x0b\x0c\x85\xa0\u1680\u180e\u2000\u2005\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"),
        [chr(c) for c in range(0x300, 0x370)] + [chr(c) for c in range(0x900, 0x980)],
        [chr(c) for c in range(0x4E00, 0x4F00)] + [chr(c) for c in range(0x3040, 0x3100)],
        [chr(c) for c in range(0x1F300, 0x1F650)] + ["\u200d", "\ufe0f", "\U0001F3FD"],
        [chr(c) for c in range(0x600, 0x700)] + [chr(c) for c in range(0x370, 0x400)],
        list("0123456789٠١٢३४५①②Ⅻ½²") + [chr(c) for c in range(0x2150, 0x2190)],
        ["'s", "'S", "'t", "'LL", "'Re", "'vE", "'m", "'D", "'\u017f", "'\u212a", "'", " '", "ſ", "K"],
        assigned,
    ]
    out = []
    for _ in range(n):
        k = rng.randint(1, 24)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return out


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
    strings += random_strings(200, 20240601)

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
