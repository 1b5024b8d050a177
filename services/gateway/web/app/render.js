// Drawing strokes on a 2D canvas, in world coordinates.
//
// A stroke is a list of [x, y] points. It is drawn through its points,
// with each corner rounded by a quadratic curve that starts and ends at
// most CORNER world units from it (or halfway along a shorter segment).
// Dense input — what a pen or a mouse in a person's hand gives — becomes a
// smooth curve through the midpoints; sparse input keeps its shape (a
// quickly drawn rectangle stays a rectangle). Every page draws the same
// points with the same code, so the same strokes give the same pixels on
// every page (the tests compare them).

const CORNER = 12;

/** A Path2D per stroke, rebuilt only when the stroke gained points. */
const cache = new Map(); // stroke id -> {n, last, path, box}

export function strokePath(points) {
  const path = new Path2D();
  const n = points.length;
  if (n === 0) return path;
  path.moveTo(points[0][0], points[0][1]);
  for (let i = 1; i < n - 1; i++) {
    const [px, py] = points[i - 1];
    const [x, y] = points[i];
    const [nx, ny] = points[i + 1];
    const d1 = Math.hypot(x - px, y - py);
    const d2 = Math.hypot(nx - x, ny - y);
    if (d1 === 0 || d2 === 0) continue;
    const r1 = Math.min(d1 / 2, CORNER) / d1;
    const r2 = Math.min(d2 / 2, CORNER) / d2;
    path.lineTo(x - (x - px) * r1, y - (y - py) * r1);
    path.quadraticCurveTo(x, y, x + (nx - x) * r2, y + (ny - y) * r2);
  }
  path.lineTo(points[n - 1][0], points[n - 1][1]);
  return path;
}

/** The world-space box a stroke covers, its width included. */
function boxOf(stroke) {
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const [x, y] of stroke.points) {
    if (x < minX) minX = x;
    if (y < minY) minY = y;
    if (x > maxX) maxX = x;
    if (y > maxY) maxY = y;
  }
  const r = stroke.width / 2 + 1;
  return { minX: minX - r, minY: minY - r, maxX: maxX + r, maxY: maxY + r };
}

function cached(stroke) {
  const n = stroke.points.length;
  const last = stroke.points[n - 1];
  let c = cache.get(stroke.id);
  if (!c || c.n !== n || c.last !== last) {
    c = { n, last, path: strokePath(stroke.points), box: boxOf(stroke) };
    cache.set(stroke.id, c);
  }
  return c;
}

/** Drops cached paths of strokes no longer drawn. */
export function pruneCache(strokes) {
  if (cache.size < 2 * strokes.length + 64) return;
  const keep = new Set(strokes.map((s) => s.id));
  for (const id of cache.keys()) if (!keep.has(id)) cache.delete(id);
}

/**
 * Draws `strokes` (bottom first) with `ctx` already transformed to world
 * coordinates; strokes outside `view` (a world-space box) are skipped.
 */
export function drawStrokes(ctx, strokes, view) {
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  for (const stroke of strokes) {
    if (stroke.points.length === 0) continue;
    const { path, box } = cached(stroke);
    if (view && (box.maxX < view.minX || box.minX > view.maxX || box.maxY < view.minY || box.minY > view.maxY)) {
      continue;
    }
    if (stroke.points.length === 1) {
      // A tap: a round dot as wide as the pen (a zero-length line may draw nothing).
      const [x, y] = stroke.points[0];
      ctx.beginPath();
      ctx.arc(x, y, stroke.width / 2, 0, Math.PI * 2);
      ctx.fillStyle = stroke.color;
      ctx.fill();
      continue;
    }
    ctx.strokeStyle = stroke.color;
    ctx.lineWidth = stroke.width;
    ctx.stroke(path);
  }
}

/** The world-space box around every stroke, or null if there is none. */
export function boundsOf(strokes) {
  let box = null;
  for (const s of strokes) {
    if (s.points.length === 0) continue;
    const b = cached(s).box;
    if (!box) box = { ...b };
    else {
      box.minX = Math.min(box.minX, b.minX);
      box.minY = Math.min(box.minY, b.minY);
      box.maxX = Math.max(box.maxX, b.maxX);
      box.maxY = Math.max(box.maxY, b.maxY);
    }
  }
  return box;
}

/**
 * The whole drawing as a PNG blob on white, at 1 pixel per world unit (less
 * if that would exceed `maxSide` pixels). Null when there is nothing drawn.
 */
export async function exportPng(strokes, maxSide = 8192) {
  const box = boundsOf(strokes);
  if (!box) return null;
  const margin = 16;
  const w = box.maxX - box.minX + 2 * margin;
  const h = box.maxY - box.minY + 2 * margin;
  const scale = Math.min(1, maxSide / Math.max(w, h));
  const canvas = document.createElement('canvas');
  canvas.width = Math.max(1, Math.ceil(w * scale));
  canvas.height = Math.max(1, Math.ceil(h * scale));
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.setTransform(scale, 0, 0, scale, (margin - box.minX) * scale, (margin - box.minY) * scale);
  drawStrokes(ctx, strokes, null);
  return new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
}
