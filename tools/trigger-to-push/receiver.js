// Push receiver for the trigger-to-push measurement: each push's text is the
// triggering event's time (template "{event.at}"); latency = arrival - that.
// GET /stats prints {count, p50, p90, p99, max} in ms; POST /reset clears.
const http = require('http');
let samples = [];
const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    const s = samples.slice().sort((a, b) => a - b);
    const q = (p) => s.length ? s[Math.min(s.length - 1, Math.ceil(p / 100 * s.length) - 1)] : null;
    res.end(JSON.stringify({ count: s.length, p50: q(50), p90: q(90), p99: q(99), max: s[s.length - 1] ?? null }) + '\n');
    return;
  }
  if (req.method === 'POST' && req.url === '/reset') { samples = []; res.end('ok\n'); return; }
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    const now = Date.now();
    try {
      const push = JSON.parse(body);
      const at = Date.parse(push.body);
      if (!Number.isNaN(at)) samples.push(now - at);
    } catch (e) { /* not a push */ }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
  });
});
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
