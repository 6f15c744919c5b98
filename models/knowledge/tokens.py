"""Chinese-aware tokens for lexical retrieval: jieba words plus single Han characters. Pure after the first call.

:func:`normalize` folds what customers vary without meaning anything: full-width forms (NFKC), case, punctuation
and spaces. :func:`tokens` gives jieba's words (precise mode, filler words such as 的/了/吗 dropped) and every Han
character on its own (characters survive typos and segmentation errors: 花被 for 花呗 still shares 花; on the
ATEC evaluation, bench/faq_eval.py, they beat character bigrams). Latin words and digit runs are kept whole.
jieba's dictionary loads on the first call (about a second, once per process, when the index is built).
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
import warnings
from functools import lru_cache
from typing import Any

FILLERS = frozenset("的 了 吗 呢 啊 吧 呀 嘛 哦 哈 么 请问 您好 你好 我 你 您 是 在 有 一下 想 要 能 可以 怎么办 呢".split())
_DROP = re.compile(r"[\W_]+", re.UNICODE)
_HAN_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_lock = threading.Lock()
_jieba: Any = None


def normalize(text: str) -> str:
    """NFKC, case-folded, without punctuation and spaces."""
    return _DROP.sub("", unicodedata.normalize("NFKC", text).casefold())


def _segmenter() -> Any:
    global _jieba
    with _lock:
        if _jieba is None:
            with warnings.catch_warnings():  # jieba 0.42 imports pkg_resources, deprecated by newer setuptools
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                import jieba

            logging.getLogger("jieba").setLevel(logging.WARNING)  # its "Building prefix dict" lines
            jieba.initialize()
            _jieba = jieba
    return _jieba


@lru_cache(maxsize=4096)
def tokens(text: str) -> tuple[str, ...]:
    """Words and Han characters of ``text`` (normalized first); () for a text with nothing to match."""
    folded = normalize(text)
    if not folded:
        return ()
    words = [w for w in _segmenter().lcut(folded, HMM=True) if w not in FILLERS]
    characters = [c for run in _HAN_RUN.findall(folded) for c in run]
    if not words:  # a text of fillers only ("你好"): keep it whole rather than match on characters alone
        words = [folded]
    return (*words, *(f"@{c}" for c in characters))  # "@" keeps a character apart from the one-character word
