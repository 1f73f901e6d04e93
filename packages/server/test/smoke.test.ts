import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, startApp, type Running } from './helpers.js';

describe('[AF-O1] health, errors and headers', () => {
  let s: Running;
  beforeAll(async () => {
    s = await startApp();
  });
  afterAll(async () => s.close());

  it('[AF-O1] /healthz answers and /readyz checks the database and bus', async () => {
    const req = client(s.url);
    expect((await req('GET', '/healthz')).body).toEqual({ status: 'ok' });
    const ready = await req('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body.checks).toMatchObject({ database: 'ok', bus: 'ok' });
  });

  it('[AF-I3] unknown routes get the catalogue error shape with a request id', async () => {
    const res = await client(s.url)('GET', '/v1/nope');
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe('not_found');
    expect(res.body.error.requestId).toBe(res.headers.get('x-request-id'));
  });

  it('[AF-O10] security headers are on every response', async () => {
    const res = await client(s.url)('GET', '/healthz');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
    expect(res.headers.get('referrer-policy')).toBe('no-referrer');
  });

  it('serves the OpenAPI 3.1 document', async () => {
    const res = await client(s.url)('GET', '/openapi.json');
    expect(res.status).toBe(200);
    expect(res.body.openapi).toBe('3.1.0');
  });
});
