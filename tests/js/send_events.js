// Sends calls through the real @segment/analytics-node client and reports what it did, for
// tests/integration/test_collector_sdks.py.
//
//   node tests/js/send_events.js < spec.json
//
// spec: {"writeKey", "host", "flushAt", "calls": [{"type": "track", "params": {...}}, ...]}.
// Prints one JSON line per HTTP request the SDK made ({"kind": "request", url, headers, body}),
// per response ({"kind": "response", status}) and per call once it is settled
// ({"kind": "call", type, messageId, error}); exits 0 once closeAndFlush() has returned.
'use strict';

const fs = require('fs');
const { Analytics } = require('@segment/analytics-node');

function print(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(0, 'utf8'));
  const analytics = new Analytics({
    writeKey: spec.writeKey,
    host: spec.host,
    flushAt: spec.flushAt,
    maxRetries: 2,
  });
  analytics.on('http_request', (request) => print({
    kind: 'request', url: request.url, method: request.method, headers: request.headers,
    body: request.body,
  }));
  analytics.on('http_response', (response) => print({
    kind: 'response', url: response.url, status: response.status,
  }));
  const settled = spec.calls.map((call) => new Promise((resolve) => {
    analytics[call.type](call.params, (err, ctx) => {
      print({
        kind: 'call', type: call.type, messageId: ctx && ctx.event.messageId,
        error: err ? String(err.message || err) : null,
      });
      resolve();
    });
  }));
  await analytics.closeAndFlush({ timeout: 20000 });
  await Promise.all(settled);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
