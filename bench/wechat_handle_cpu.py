"""CPU and wall time of one WeChat callback in the gateway's handler, without HTTP, one thread.

Runs ``WeChatMPAdapter.handle`` on pre-built, AES-encrypted text callbacks against PostgreSQL and
Redis (a fresh database), after 50 warm-up calls: signature, decryption, XML, replay check,
ingress (two transactions) and the Celery publish.

Usage: python -m bench.wechat_handle_cpu [--calls 250]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from channels.app import build_services
from channels.wechat_mp import WeChatMPAdapter
from models.infra.migrate import upgrade
from models.settings import Settings
from tests import services
from tests import wechat_platform as wp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=250)
    args = parser.parse_args()
    services.ensure_postgres()
    services.ensure_redis()
    name, url = services.create_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=tmp, database_url=url, broker_url=services.redis_db_url(13), secret_key="k",
                                wechat_accounts=[wp.account()], wechat_timestamp_window_s=3000)
            upgrade(settings)
            gateway = build_services(settings)
            adapter = WeChatMPAdapter(gateway.context("wechat_mp"))
            account = adapter.account("shop")
            assert account is not None
            callbacks = [wp.callback(wp.text_xml(f"o{n % 50}", f"问题{n}", msgid=900_000 + n), mode="aes")
                         for n in range(50 + args.calls)]
            for cb in callbacks[:50]:
                adapter.handle(account, cb.params, cb.body)
            wall, cpu = time.perf_counter(), time.process_time()
            for cb in callbacks[50:]:
                adapter.handle(account, cb.params, cb.body)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            per_wall, per_cpu = wall / args.calls * 1000, cpu / args.calls * 1000
            print(f"{args.calls} callbacks: {per_wall:.2f} ms wall, {per_cpu:.2f} ms CPU each")
            gateway.db.dispose()
    finally:
        services.drop_database(name)
        services.redis_db_url(13)  # flush what was published


if __name__ == "__main__":
    main()
