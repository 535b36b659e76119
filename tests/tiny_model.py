"""A tiny random causal LM with a locally trained tokenizer, for fast tests (no hub access needed).

Qwen2 architecture, 2 layers, hidden size 64, byte-level BPE trained on Wikipedia extracts that ship in a
package, and a ChatML chat template like Qwen2.5-Instruct's. Weights are random: generations are gibberish,
which is all the tests need.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_model(folder: Path, vocab_size: int = 512, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Write a tokenizer, a random Qwen2 model and its generation config into `folder`; return it. With the default
    initialisation the model repeats one token whatever its context; with `initializer_range` 0.3 its greedy
    continuations change with every token and position (for tests that must see a wrong position or mask)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from grace.data.assets import load_wiki_articles
    from grace.prompts import SYSTEM_PROMPT

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = [SYSTEM_PROMPT] + [a["extract"] for a in load_wiki_articles()[:400]]

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE
    )
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        initializer_range=initializer_range,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(folder)
    return folder


def build_tiny_encoder(folder: Path, vocab_size: int = 300, seed: int = 0) -> Path:
    """A random 2-layer BERT (hidden 32) with a WordPiece tokenizer trained on packaged Wikipedia extracts, saved
    as a plain Hugging Face folder: sentence-transformers loads it with mean pooling."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from grace.data.assets import load_wiki_articles

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    wordpiece.train_from_iterator([a["extract"] for a in load_wiki_articles()[:300]], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    return folder
