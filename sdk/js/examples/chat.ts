// A chat in a terminal, in Node: `node chat.js http://127.0.0.1:8080 lobby ann`.
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { CollabClient, ConflictError } from '@collab/client';

const [url = 'http://127.0.0.1:8080', id = 'lobby', user = 'ann'] = process.argv.slice(2);
const client = new CollabClient({
  url,
  WebSocket, // Node 20 has no WebSocket of its own
  // A dev-mode server hands out tokens; in production your backend does.
  token: async () => {
    const answer = await fetch(`${url}/v1/dev/token`, { method: 'POST', body: JSON.stringify({ user }) });
    return (await answer.json()).token;
  },
});
await client.createRoom({ kind: 'channel', id }).catch((e) => {
  if (!(e instanceof ConflictError)) throw e; // it exists already: fine
});
const chat = client.room(id);
await chat.ready;

// The last ten messages (history comes newest first), then live ones.
const { value: page } = await chat.history({ kinds: ['message'], limit: 10 }).next();
for (const m of (page?.ops ?? []).reverse()) if (m.op.kind === 'message') console.log(`${m.user}: ${m.op.text}`);
chat.on('op', (m) => { if (m.op.kind === 'message' && m.user !== user) console.log(`${m.user}: ${m.op.text}`); });
chat.on('presence', (p) => console.log(`* ${p.user.name} ${p.event === 'join' ? 'came' : 'left'}`));
chat.on('error', (e) => console.error(`! ${e.code}: ${e.message}`));

// Each line is sent once, whatever the network does, and acked with its seq.
createInterface({ input: process.stdin })
  .on('line', (text) => { chat.say(text).then(({ seq }) => console.log(`  (#${seq})`), () => {}); })
  .on('close', () => client.close());
