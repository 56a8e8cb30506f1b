"""The comparison client for `cargo bench`: a straightforward Python asyncio job doing what
payple-reconcile does against the simulator: one auth, one aiohttp session, a semaphore
bounding the lookups in flight, results written to SQLite with executemany in batches.

Usage: asyncio_client.py ORIGIN KEYS_CSV DB_PATH CONCURRENCY
(credentials and Referer from PAYPLE_CST_ID, PAYPLE_CUST_KEY, PAYPLE_REFERER)
Prints one JSON line: {"lookups": N, "seconds": S}. CPU and memory are measured by the
benchmark from outside (wait4).
"""

import asyncio
import csv
import json
import os
import sqlite3
import sys
import time

import aiohttp

CST_ID = os.environ["PAYPLE_CST_ID"]
CUST_KEY = os.environ["PAYPLE_CUST_KEY"]
REFERER = os.environ["PAYPLE_REFERER"]
BATCH = 500


async def auth(session, origin):
    body = {"cst_id": CST_ID, "custKey": CUST_KEY, "PCD_PAY_WORK": "PUSERINFO"}
    async with session.post(f"{origin}/php/auth.php", json=body) as resp:
        return json.loads(await resp.text())


async def look_up(session, token, payer_id, sem):
    body = {
        "PCD_CST_ID": token["cst_id"],
        "PCD_CUST_KEY": token["custKey"],
        "PCD_AUTH_KEY": token["AuthKey"],
        "PCD_PAYER_ID": payer_id,
    }
    async with sem:
        async with session.post(token["return_url"], json=body) as resp:
            reply = json.loads((await resp.text()).lstrip("\ufeff"))
    ok = reply.get("PCD_PAY_RST") == "success"
    return (
        payer_id,
        "active" if ok else "gone",
        reply.get("PCD_PAY_TYPE"),
        reply.get("PCD_PAY_CARDNAME"),
        reply.get("PCD_PAY_CARDNUM"),
        reply.get("PCD_PAY_CODE"),
        reply.get("PCD_PAY_MSG"),
    )


async def main(origin, keys_path, db_path, concurrency):
    with open(keys_path, newline="", encoding="utf-8") as f:
        keys = [row["payer_id"] for row in csv.DictReader(f)]
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS checks (payer_id TEXT PRIMARY KEY, status TEXT, "
        "pay_type TEXT, card_name TEXT, card_mask TEXT, result_code TEXT, result_msg TEXT)"
    )
    started = time.monotonic()
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Referer": REFERER, "Cache-Control": "no-cache"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        token = await auth(session, origin)
        pending = set()
        batch = []
        done = 0
        for key in keys:
            if len(pending) >= concurrency * 2:
                finished, pending = await asyncio.wait(
                    pending, return_when=asyncio.FIRST_COMPLETED
                )
                for task in finished:
                    batch.append(task.result())
            pending.add(asyncio.ensure_future(look_up(session, token, key, sem)))
            if len(batch) >= BATCH:
                db.executemany("INSERT OR IGNORE INTO checks VALUES (?,?,?,?,?,?,?)", batch)
                db.commit()
                done += len(batch)
                batch = []
        if pending:
            finished, _ = await asyncio.wait(pending)
            batch.extend(task.result() for task in finished)
        db.executemany("INSERT OR IGNORE INTO checks VALUES (?,?,?,?,?,?,?)", batch)
        db.commit()
        done += len(batch)
    db.close()
    print(json.dumps({"lookups": done, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    origin, keys_path, db_path, concurrency = sys.argv[1:5]
    asyncio.run(main(origin, keys_path, db_path, int(concurrency)))
