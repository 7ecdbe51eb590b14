// postgres.js measured the way pgfast's benchmarks measure Python libraries.
// Usage: node postgresjs.mjs URL CASE SECONDS REPEATS
//   CASE: sequential_async (one connection), concurrent_10 / concurrent_100 (pool of 10),
//         fetch_10k (rows/s, one connection).
// Prints one JSON line: {"case": ..., "runs": [ops/s, ...]}.
import postgres from "postgres";

const [url, name, seconds, repeats] = process.argv.slice(2);
const tasks = { sequential_async: 1, concurrent_10: 10, concurrent_100: 100, fetch_10k: 1 }[name];
if (!tasks) throw new Error(`unknown case ${name}`);
const sql = postgres(url, { max: name.startsWith("concurrent") ? 10 : 1, prepare: true });
const fetch = name === "fetch_10k";

async function op(i) {
  if (fetch) {
    return sql`SELECT g AS id, g::text AS name, g * 1.5 AS score, now() AS at
               FROM generate_series(1, 10000) g`;
  }
  return sql`SELECT ${i & 0xffff}::int AS a, 'x' AS b`;
}

async function rate(duration) {
  const start = performance.now();
  const deadline = start + duration * 1000;
  let total = 0;
  async function worker(n) {
    let done = 0;
    while (performance.now() < deadline) {
      await op(n * 1000 + done);
      done += 1;
    }
    total += done;
  }
  await Promise.all(Array.from({ length: tasks }, (_, n) => worker(n)));
  const ops = total / ((performance.now() - start) / 1000);
  return fetch ? ops * 10000 : ops;
}

await rate(Math.min(0.3, Number(seconds) / 4));
const runs = [];
for (let i = 0; i < Number(repeats); i++) runs.push(await rate(Number(seconds) / Number(repeats)));
console.log(JSON.stringify({ case: name, runs }));
await sql.end();
