"""Speech in and out for the voice channels (the phone, WeChat voice messages).

:class:`~channels.speech.base.Recognizer` turns an utterance's PCM into text;
:class:`~channels.speech.base.Synthesizer` turns text into PCM at the call's sample rate. Local
providers need no cloud (espeak-ng, pocketsphinx); Aliyun NLS is the production choice.
"""
