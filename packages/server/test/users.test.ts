import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, registerUser, startApp, uid, type Running, type TestUser } from './helpers.js';

describe('users: profiles and search', () => {
  let s: Running;
  let req: ReturnType<typeof client>;
  let me: TestUser;
  beforeAll(async () => {
    s = await startApp();
    req = client(s.url);
    me = await registerUser(s.url);
  });
  afterAll(async () => s.close());

  it('every users route requires a valid bearer token', async () => {
    for (const [method, path] of [['GET', '/v1/me'], ['PATCH', '/v1/me'], ['GET', `/v1/users/${me.id}`], ['GET', '/v1/users?query=u']] as const) {
      const res = await req(method, path, method === 'PATCH' ? { body: {} } : {});
      expect({ path, status: res.status }).toEqual({ path, status: 401 });
    }
  });

  it('GET /v1/me returns the own profile with email; PATCH /v1/me changes it', async () => {
    const res = await req('GET', '/v1/me', { token: me.accessToken });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      id: me.id, username: me.username, displayName: me.username, email: me.email, emailVerified: false,
      avatarUrl: null, statusText: null, createdAt: expect.any(String),
    });
    expect(Date.parse(res.body.createdAt)).toBeGreaterThan(Date.now() - 60_000);

    const patched = await req('PATCH', '/v1/me', { token: me.accessToken, body: { displayName: 'Ada L.', statusText: 'busy', avatarUrl: 'https://cdn.example.test/a.png' } });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ displayName: 'Ada L.', statusText: 'busy', avatarUrl: 'https://cdn.example.test/a.png' });
    const cleared = await req('PATCH', '/v1/me', { token: me.accessToken, body: { statusText: null } });
    expect(cleared.body).toMatchObject({ displayName: 'Ada L.', statusText: null });
    expect((await req('GET', '/v1/me', { token: me.accessToken })).body.statusText).toBeNull();
  });

  it('[AF-I1] PATCH /v1/me rejects unknown fields, wrong types and non-https avatars with 400', async () => {
    const bodies = [{ email: 'x@y.zz' }, { username: 'other' }, { displayName: 7 }, { displayName: '' }, { avatarUrl: 'http://insecure.test/a.png' }, { avatarUrl: 'javascript:alert(1)' }, { statusText: 'x'.repeat(141) }];
    for (const body of bodies) {
      const res = await req('PATCH', '/v1/me', { token: me.accessToken, body });
      expect({ body, status: res.status, code: res.body.error?.code }).toEqual({ body, status: 400, code: 'validation_failed' });
    }
    expect((await req('GET', '/v1/me', { token: me.accessToken })).body.email).toBe(me.email);
  });

  it('[AF-F3] a public profile never carries the email; unknown ids are 404, malformed ones 400', async () => {
    const other = await registerUser(s.url);
    const res = await req('GET', `/v1/users/${other.id}`, { token: me.accessToken });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ id: other.id, username: other.username, displayName: other.username, avatarUrl: null, statusText: null });
    expect(JSON.stringify(res.body)).not.toContain('@');
    expect((await req('GET', '/v1/users/0190a000-0000-7000-8000-000000000000', { token: me.accessToken })).body.error.code).toBe('not_found');
    expect((await req('GET', '/v1/users/nope', { token: me.accessToken })).status).toBe(400);
  });

  it('[AF-F3] search finds users by username prefix, case-insensitively, paginated in order, without emails', async () => {
    const p = `s${uid(4)}`;
    const names = [`${p}_one`, `${p}Two`, `${p}three`, `${p}.four`, `${p}five`, `${p}_six`, `${p}seven`];
    for (const n of names) await registerUser(s.url, n);
    await registerUser(s.url, `x${p}`); // contains the prefix, does not start with it
    const seen: any[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const qs = new URLSearchParams({ query: p.toUpperCase(), limit: '3', ...(cursor ? { cursor } : {}) });
      const res = await req('GET', `/v1/users?${qs.toString()}`, { token: me.accessToken });
      expect(res.status).toBe(200);
      expect(res.body.items.length).toBeLessThanOrEqual(3);
      seen.push(...res.body.items);
      cursor = res.body.nextCursor;
      pages++;
    } while (cursor && pages < 10);
    expect(pages).toBe(3);
    const expected = [...names].sort((a, b) => (a.toLowerCase() < b.toLowerCase() ? -1 : 1));
    expect(seen.map((u) => u.username)).toEqual(expected);
    for (const u of seen) expect(Object.keys(u).sort()).toEqual(['avatarUrl', 'displayName', 'id', 'statusText', 'username']);
    expect(JSON.stringify(seen)).not.toContain('@');
  });

  it('[AF-F3][AF-I2] % and _ in the query are matched literally', async () => {
    const p = `w${uid(4)}`;
    for (const n of [`${p}_a`, `${p}xa`, `${p}ya`]) await registerUser(s.url, n);
    const search = async (query: string) => (await req('GET', `/v1/users?${new URLSearchParams({ query }).toString()}`, { token: me.accessToken })).body.items.map((u: any) => u.username);
    expect(await search(p)).toEqual([`${p}_a`, `${p}xa`, `${p}ya`]);
    expect(await search(`${p}_`)).toEqual([`${p}_a`]);
    expect(await search(`${p}%`)).toEqual([]);
    expect(await search(`${p.slice(0, 2)}%a`)).toEqual([]);
    expect(await search(`${p}\\`)).toEqual([]);
    expect(await search(`' or 1=1 --`)).toEqual([]);
  });

  it('[AF-I1] search validates its query string', async () => {
    for (const qs of ['', 'query=', `query=${'a'.repeat(33)}`, 'query=a&limit=0', 'query=a&limit=51', 'query=a&limit=x', 'query=a&admin=1']) {
      const res = await req('GET', `/v1/users?${qs}`, { token: me.accessToken });
      expect({ qs, status: res.status }).toEqual({ qs, status: 400 });
    }
    expect((await req('GET', '/v1/users?query=a&cursor=%25%25', { token: me.accessToken })).status).toBe(400);
  });

  it('[AF-D4] getPublicMany loads many users in one query; exists, setLastSeen and lastSeenMany work', async () => {
    const users = await Promise.all([0, 1, 2, 3].map(() => registerUser(s.url)));
    const svc = s.app.services.users;
    const ids = [...users.map((u) => u.id), users[0]!.id, '0190a000-0000-7000-8000-000000000000'];
    const before = s.app.ctx.database.stats.queries;
    const map = await svc.getPublicMany(ids);
    expect(s.app.ctx.database.stats.queries - before).toBe(1);
    expect([...map.keys()].sort()).toEqual(users.map((u) => u.id).sort());
    expect(map.get(users[1]!.id)).toEqual({ id: users[1]!.id, username: users[1]!.username, displayName: users[1]!.username, avatarUrl: null, statusText: null });
    expect(await svc.exists(users[0]!.id)).toBe(true);
    expect(await svc.exists('0190a000-0000-7000-8000-000000000000')).toBe(false);
    await svc.setLastSeen(users[0]!.id, 2_000);
    await svc.setLastSeen(users[0]!.id, 1_000); // older: ignored
    const seen = await svc.lastSeenMany([users[0]!.id, users[1]!.id]);
    expect(seen.get(users[0]!.id)).toBe(2_000);
    expect(seen.get(users[1]!.id)).toBeNull();
  });
});

describe('[AF-F3] user search rate limit', () => {
  it('[AF-F3][AF-A1] search is rate limited per user', async () => {
    const s = await startApp({ USER_SEARCH_PER_MINUTE: '3' });
    try {
      const req = client(s.url);
      const [a, b] = [await registerUser(s.url), await registerUser(s.url)];
      const statuses: number[] = [];
      for (let i = 0; i < 4; i++) statuses.push((await req('GET', '/v1/users?query=u', { token: a.accessToken })).status);
      expect(statuses).toEqual([200, 200, 200, 429]);
      const limited = await req('GET', '/v1/users?query=u', { token: a.accessToken });
      expect(limited.body.error.code).toBe('rate_limited');
      expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
      // Per user: another user is unaffected.
      expect((await req('GET', '/v1/users?query=u', { token: b.accessToken })).status).toBe(200);
    } finally {
      await s.close();
    }
  });
});
