"""``kefu demo``: Kefu's own processes started from Python, a few questions and one phone call through them.

- :mod:`workers.demo.run`: the questions, the report (:func:`run_demo`);
- :mod:`workers.demo.call`: the phone call, through the PBX fake (``channels/telephony/fake_pbx.py``);
- :mod:`workers.demo.processes`: a worker in a child process and the gateway in a thread, the same
  launchers the integration tests and benchmarks use.
"""

from workers.demo.run import run_demo

__all__ = ["run_demo"]
