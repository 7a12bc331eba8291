"""The tokenizer part of a text GGUF, as llama.cpp's converter writes it for a Qwen2 BPE (``_set_vocab_gpt2``).

Read with the ``tokenizers`` library from ``tokenizer.json`` (no transformers needed): the token list padded to the
model's vocabulary size with ``[PAD{i}]`` (type UNUSED), added tokens as CONTROL when special or looking special
(``<|...|>``), else USER_DEFINED (except ``<think>``/``</think>``, kept as text for reasoning.py); the
pre-tokenizer recognised by the hash of a check text's tokens, as llama.cpp recognises it; merges, special token ids
and the chat template through gguf-py's ``SpecialVocab`` (the same code llama.cpp's converter uses).
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

# llama.cpp's check text (convert_hf_to_gguf_update.py): its tokens' hash names the pre-tokenizer
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)
# The hashes llama.cpp's converter maps to "qwen2" (Qwen1.5 / Qwen2 / Qwen2.5 BPE, and Qwen3's)
KNOWN_PRE = {
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
}


THINK_TAGS = ("<think>", "</think>")


def _looks_special(token: str) -> bool:
    """llama.cpp's ``does_token_look_special`` for the tokens a Qwen vocabulary has."""
    return token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (
        (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def vocab_tokens(tokenizer_json: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    """Tokens, token types and pre-tokenizer name, as llama.cpp's ``get_vocab_base`` gives them."""
    import gguf
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    chkhsh = sha256(str(tok.encode(CHECK_TEXT).ids).encode()).hexdigest()
    if chkhsh not in KNOWN_PRE:
        raise ValueError(f"{tokenizer_json}: unknown pre-tokenizer (hash {chkhsh}); only Qwen2 BPE is converted")
    reverse = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    added = tok.get_added_tokens_decoder()
    if max(reverse) >= vocab_size:
        raise ValueError(f"{tokenizer_json}: token id {max(reverse)} beyond the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if i in added:
            if not added[i].normalized:  # llama.cpp assumes added tokens pre-normalized
                token = tok.decode(tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            # the think tags stay text (USER_DEFINED) even when flagged special: the engine detokenizes without
            # control tokens, and the reasoning can only be split from the answer where the tags are seen
            if token not in THINK_TAGS and (added[i].special or _looks_special(token)):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types, KNOWN_PRE[chkhsh]


def add_vocab(writer, checkpoint_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer keys of a text GGUF (model, pre-tokenizer, tokens, types, merges, special ids, chat
    template) into ``writer`` (a gguf.GGUFWriter)."""
    import gguf

    tokens, types, pre = vocab_tokens(checkpoint_dir / "tokenizer.json", vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(checkpoint_dir, load_merges=True)
    # a ByteLevel post-processor adds neither BOS nor EOS (what llama.cpp's own gguf-py records since 0c1e570)
    post = json.loads((checkpoint_dir / "tokenizer.json").read_text(encoding="utf-8")).get("post_processor") or {}
    if any(p.get("type") == "ByteLevel" for p in post.get("processors", [post])):
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)
