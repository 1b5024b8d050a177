// A shared whiteboard in a browser: draw with the pointer, Ctrl+Z to undo.
import { CollabClient, IndexedDbStorage, type Point } from '@collab/client';

const canvas = document.querySelector('canvas')!;
const ctx = canvas.getContext('2d')!;
const client = new CollabClient({
  url: location.origin,
  // Your backend mints the JWT; the client asks again when it expires.
  token: async () => (await (await fetch('/api/collab-token')).json()).token,
  storage: new IndexedDbStorage(), // unsent strokes survive a reload or a crash
});
const board = client.room('demo-board');

// The server's strokes with mine still on their way drawn on top.
function draw() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const s of board.strokes()) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = s.width;
    ctx.beginPath();
    s.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
  }
}
for (const event of ['reset', 'op', 'outbox'] as const) board.on(event, draw);

let stroke: string | null = null;
const at = (e: PointerEvent): Point => [e.offsetX, e.offsetY];
canvas.onpointerdown = (e) => { stroke = board.beginStroke({ color: '#1f6feb', width: 4, points: [at(e)] }); };
canvas.onpointermove = (e) => {
  board.cursor(...at(e)); // sent at most 20 times a second
  if (stroke) board.addPoints(stroke, [at(e)]);
};
canvas.onpointerup = () => { if (stroke) board.endStroke(stroke); stroke = null; };
document.onkeydown = (e) => { if (e.ctrlKey && e.key === 'z') board.undo(); };
client.on('status', (s) => { document.title = s.state === 'connected' ? 'Board' : `Board (${s.state})`; });
