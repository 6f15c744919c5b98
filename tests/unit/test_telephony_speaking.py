"""Reply text into sentences, sentences into real-time audio, and what the caller heard after a clear."""

from __future__ import annotations

import asyncio
import time

from channels.telephony.events import frame_bytes
from channels.telephony.speaking import Player, SentenceSplitter


def test_sentences_come_out_as_soon_as_they_end() -> None:
    splitter = SentenceSplitter()
    out: list[str] = []
    for piece in ["您好", "，您的订单", "已经发货。预计", "明天送达！还有", "什么问题吗"]:
        out += splitter.feed(piece)
    assert out == ["您好，您的订单已经发货。", "预计明天送达！"]
    assert splitter.flush() == ["还有什么问题吗"]


def test_tiny_sentences_are_merged_and_english_periods_split() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("好。我来查一下。") == ["好。我来查一下。"]
    assert splitter.feed("It ships today. Version 2.5 is ") == ["It ships today."]
    assert splitter.flush() == ["Version 2.5 is"]


def test_a_run_on_sentence_is_spoken_from_a_clause_break() -> None:
    splitter = SentenceSplitter()
    text = "您好您的订单已经从上海仓库发出，预计明天下午由顺丰快递送到您填写的收货地址请注意查收"
    out = splitter.feed(text)
    assert out == ["您好您的订单已经从上海仓库发出，"]  # not held back until the very end
    assert "".join(out + splitter.flush()) == text
    words = SentenceSplitter().feed("word " * 20)  # no punctuation at all: cut at a space
    assert words and all(len(w) <= 40 for w in words)


def test_audio_is_paced_in_real_time_and_a_clear_keeps_only_what_was_heard() -> None:
    rate = 8000
    sent: list[tuple[float, bytes]] = []

    async def send(frame: bytes) -> None:
        sent.append((time.monotonic(), frame))

    async def call() -> tuple[list[str], list[tuple[int, str]]]:
        player = Player(send, rate)
        player.start()
        player.say("第一句。", bytes(frame_bytes(rate) * 5))  # 100 ms
        player.say("第二句。", bytes(frame_bytes(rate) * 50))  # 1 s
        while not player.heard:  # until the first sentence is over; the second is playing then
            await asyncio.sleep(0.01)
        dropped = player.clear()
        await player.wait_idle()
        await player.stop()
        return player.heard, dropped

    heard, dropped = asyncio.run(call())
    assert heard == ["第一句。"] and dropped == [(0, "第二句。")]
    frames_sent = len(sent)
    assert 5 < frames_sent < 55  # stopped mid-way: not all 55 frames went out
    span = sent[-1][0] - sent[0][0]
    assert span >= (frames_sent - 1) * 0.02 * 0.8  # paced, not burst


def test_fixed_prompts_are_synthesized_once_per_voice() -> None:
    from channels.telephony.speaking import PromptAudio

    class Voice:
        pass

    prompts, voice, other = PromptAudio(size=2), Voice(), Voice()
    assert prompts.get(voice, "您好。", 8000) is None
    prompts.put(voice, "您好。", 8000, b"hello")
    assert prompts.get(voice, "您好。", 8000) == b"hello"
    assert prompts.get(voice, "您好。", 16000) is None and prompts.get(other, "您好。", 8000) is None
    prompts.put(voice, "再见。", 8000, b"bye")
    prompts.put(voice, "请稍候。", 8000, b"wait")  # over the size: the least recently used goes
    assert prompts.get(voice, "您好。", 8000) is None and prompts.get(voice, "再见。", 8000) == b"bye"
    prompts.ttl_s = -1.0
    assert prompts.get(voice, "再见。", 8000) is None  # too old
