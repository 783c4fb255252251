/**
 * Hand-written SVG horizontal bar charts (no chart library). One row per bar (or per group of
 * bars, e.g. p50 and p99), the value printed at the end of each bar, linear or log10 axis.
 */

const FONT = 'font-family="-apple-system, BlinkMacSystemFont, Segoe UI, Helvetica, Arial, sans-serif"';

/** Bar colours by competitor, so every chart uses the same colour for the same library. */
export function colorOf(adapter) {
  if (/redis-pubsub-dict/.test(adapter)) return /WriteBack|update/.test(adapter) ? '#1e40af' : '#2563eb';
  if (/bentocache/.test(adapter)) return '#d97706';
  if (/node-redis/.test(adapter)) return '#dc2626';
  if (/lru-cache/.test(adapter)) return '#059669';
  return '#6b7280'; // raw ioredis and anything else
}

const escape = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Compact number: 12.3M, 456k, 7.8k, 950, 12.5. */
export function compact(v) {
  if (!Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(a >= 1e10 ? 0 : 1)}G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(a >= 1e7 ? 0 : 1)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(a >= 1e4 ? 0 : 1)}k`;
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  return v.toFixed(1);
}

/**
 * @param {object} chart
 * @param {string} chart.title
 * @param {string} [chart.subtitle]
 * @param {string} chart.unit            appended to printed values (e.g. "ops/s")
 * @param {boolean} [chart.log]          log10 axis (for values spanning several decades)
 * @param {{label: string, color?: string, values?: {value: number, name?: string, color?: string}[], value?: number, text?: string}[]} chart.rows
 *   each row has one `value` or several `values` (drawn as stacked thin bars); `text` replaces the
 *   bar (e.g. "skipped: not implemented").
 * @param {{name: string, color: string}[]} [chart.legend]
 */
export function barChart({ title, subtitle, unit, log = false, rows, legend }) {
  // Label column sized to the longest label (about 6.6 px per character at 12 px).
  const longest = Math.max(10, ...rows.map((r) => String(r.label).length));
  const labelWidth = Math.round(Math.min(560, longest * 6.6 + 20));
  const valueWidth = 100;
  const plotWidth = 520;
  const plotLeft = labelWidth + 10;
  const width = plotLeft + plotWidth + valueWidth;
  const top = subtitle ? 64 : 46;
  const normalized = rows.map((r) => ({
    ...r,
    values: r.values ?? (r.value !== undefined ? [{ value: r.value, color: r.color }] : []),
  }));
  const all = normalized.flatMap((r) => r.values.map((v) => v.value)).filter((v) => Number.isFinite(v) && v > 0);
  const max = all.length ? Math.max(...all) : 1;
  const min = all.length ? Math.min(...all) : 1;

  // Scale.
  let scale;
  let ticks;
  if (log) {
    const lo = Math.floor(Math.log10(min));
    const hi = Math.ceil(Math.log10(max) + 1e-9);
    const span = Math.max(1, hi - lo);
    scale = (v) => (v > 0 ? ((Math.log10(v) - lo) / span) * plotWidth : 0);
    ticks = Array.from({ length: span + 1 }, (_, i) => 10 ** (lo + i));
  } else {
    const step = niceStep(max / 5);
    const hi = Math.ceil(max / step) * step;
    scale = (v) => (v / hi) * plotWidth;
    ticks = Array.from({ length: Math.round(hi / step) + 1 }, (_, i) => i * step);
  }

  const barH = 14;
  const rowGap = 10;
  let y = top + 8;
  const body = [];
  for (const row of normalized) {
    const n = Math.max(1, row.values.length);
    const rowH = n * barH + (n - 1) * 2;
    body.push(`<text x="${labelWidth}" y="${y + rowH / 2 + 4}" text-anchor="end" font-size="12" fill="#111827">${escape(row.label)}</text>`);
    if (row.text || row.values.length === 0) {
      body.push(`<text x="${plotLeft + 4}" y="${y + rowH / 2 + 4}" font-size="12" font-style="italic" fill="#6b7280">${escape(row.text ?? 'not measured')}</text>`);
    } else {
      row.values.forEach((v, i) => {
        const by = y + i * (barH + 2);
        const w = Math.max(1, scale(v.value));
        const color = v.color ?? row.color ?? '#6b7280';
        body.push(`<rect x="${plotLeft}" y="${by}" width="${w.toFixed(1)}" height="${barH}" rx="2" fill="${color}"><title>${escape(`${row.label}${v.name ? ` (${v.name})` : ''}: ${compact(v.value)} ${unit}`)}</title></rect>`);
        body.push(`<text x="${(plotLeft + w + 5).toFixed(1)}" y="${by + barH - 3}" font-size="11" fill="#374151">${escape(`${compact(v.value)}${v.name ? ` ${v.name}` : ''}`)}</text>`);
      });
    }
    y += rowH + rowGap;
  }
  const plotBottom = y;
  const axis = [];
  for (const t of ticks) {
    const x = plotLeft + scale(t);
    if (log && t <= 0) continue;
    axis.push(`<line x1="${x.toFixed(1)}" y1="${top}" x2="${x.toFixed(1)}" y2="${plotBottom}" stroke="#e5e7eb" stroke-width="1"/>`);
    axis.push(`<text x="${x.toFixed(1)}" y="${plotBottom + 16}" text-anchor="middle" font-size="11" fill="#6b7280">${escape(compact(t))}</text>`);
  }
  axis.push(`<line x1="${plotLeft}" y1="${top}" x2="${plotLeft}" y2="${plotBottom}" stroke="#9ca3af" stroke-width="1"/>`);
  let height = plotBottom + 40;
  const legendItems = [];
  if (legend?.length) {
    let lx = plotLeft;
    for (const item of legend) {
      legendItems.push(`<rect x="${lx}" y="${height - 14}" width="12" height="12" rx="2" fill="${item.color}"/>`);
      legendItems.push(`<text x="${lx + 16}" y="${height - 4}" font-size="11" fill="#374151">${escape(item.name)}</text>`);
      lx += 30 + item.name.length * 6.5;
    }
    height += 10;
  }
  const axisLabel = `${unit}${log ? ' (log scale)' : ''}`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT} role="img" aria-label="${escape(title)}">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="16" y="26" font-size="16" font-weight="600" fill="#111827">${escape(title)}</text>
${subtitle ? `<text x="16" y="46" font-size="12" fill="#4b5563">${escape(subtitle)}</text>` : ''}
${axis.join('\n')}
${body.join('\n')}
<text x="${plotLeft + plotWidth / 2}" y="${plotBottom + 32}" text-anchor="middle" font-size="11" fill="#6b7280">${escape(axisLabel)}</text>
${legendItems.join('\n')}
</svg>
`;
}

function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}
