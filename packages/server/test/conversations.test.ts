import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LIMITS } from '@secureconnect/protocol';
import { client, registerUser, startApp, uid, type Running, type TestUser } from './helpers.js';

let s: Running;
let req: ReturnType<typeof client>;

beforeAll(async () => {
  s = await startApp();
  req = client(s.url);
});
afterAll(async () => s.close());

const auth = (u: TestUser) => ({ userId: u.id, sessionId: randomUUID(), deviceId: null });
const users = (n: number) => Promise.all(Array.from({ length: n }, () => registerUser(s.url)));

async function group(owner: TestUser, members: TestUser[], title = `g-${uid(3)}`) {
  const res = await req('POST', '/v1/conversations', { token: owner.accessToken, body: { type: 'group', title, memberIds: members.map((m) => m.id) } });
  expect(res.status).toBe(201);
  return res.body;
}

async function send(u: TestUser, conversationId: string, text = `hi ${uid(3)}`) {
  const res = await req('POST', `/v1/conversations/${conversationId}/messages`, { token: u.accessToken, body: { clientMsgId: uid(8), content: { type: 'text', text } } });
  expect(res.status).toBe(201);
  return res.body;
}

async function eventsFor(u: TestUser, type?: string) {
  const all = await s.app.ctx.events.readForUser(u.id, null, 0);
  return all.filter((e) => !type || e.event.type === type);
}

describe('direct conversations', () => {
  it('[C1] one direct conversation per pair: 201 then 200 with the same id, from either side', async () => {
    const [a, b] = await users(2);
    const first = await req('POST', '/v1/conversations', { token: a!.accessToken, body: { type: 'direct', userId: b!.id } });
    expect(first.status).toBe(201);
    expect(first.body).toMatchObject({ type: 'direct', title: null, encryption: 'none', lastSeq: 0, readSeq: 0, unreadCount: 0, lastMessage: null });
    expect(first.body.members.map((m: any) => m.userId).sort()).toEqual([a!.id, b!.id].sort());
    const again = await req('POST', '/v1/conversations', { token: a!.accessToken, body: { type: 'direct', userId: b!.id } });
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(first.body.id);
    const reverse = await req('POST', '/v1/conversations', { token: b!.accessToken, body: { type: 'direct', userId: a!.id } });
    expect(reverse.status).toBe(200);
    expect(reverse.body.id).toBe(first.body.id);
  });

  it('[C1] concurrent creation from both sides yields exactly one conversation', async () => {
    const [a, b] = await users(2);
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => {
        const [from, to] = i % 2 ? [a!, b!] : [b!, a!];
        return req('POST', '/v1/conversations', { token: from.accessToken, body: { type: 'direct', userId: to.id } });
      }),
    );
    expect(results.map((r) => r.status).every((st) => st === 200 || st === 201)).toBe(true);
    expect(new Set(results.map((r) => r.body.id)).size).toBe(1);
    expect(results.filter((r) => r.status === 201)).toHaveLength(1);
    const list = await req('GET', '/v1/conversations', { token: a!.accessToken });
    expect(list.body.items.filter((c: any) => c.type === 'direct')).toHaveLength(1);
  });

  it('direct with yourself is 400; with an unknown user 404', async () => {
    const [a] = await users(1);
    expect((await req('POST', '/v1/conversations', { token: a!.accessToken, body: { type: 'direct', userId: a!.id } })).status).toBe(400);
    const unknown = await req('POST', '/v1/conversations', { token: a!.accessToken, body: { type: 'direct', userId: randomUUID() } });
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('not_found');
  });

  it('[AF-A8] a direct conversation has fixed membership and no title (403)', async () => {
    const [a, b, c] = await users(3);
    const conv = (await req('POST', '/v1/conversations', { token: a!.accessToken, body: { type: 'direct', userId: b!.id } })).body;
    expect((await req('POST', `/v1/conversations/${conv.id}/members`, { token: a!.accessToken, body: { userId: c!.id } })).status).toBe(403);
    expect((await req('DELETE', `/v1/conversations/${conv.id}/members/${b!.id}`, { token: a!.accessToken })).status).toBe(403);
    expect((await req('DELETE', `/v1/conversations/${conv.id}/members/${a!.id}`, { token: a!.accessToken })).status).toBe(403);
    expect((await req('PATCH', `/v1/conversations/${conv.id}`, { token: a!.accessToken, body: { title: 'x' } })).status).toBe(403);
  });
});

describe('groups', () => {
  it('creates a group with the creator as owner and appends conversation.updated in the same change [E2]', async () => {
    const [a, b, c] = await users(3);
    const g = await group(a!, [b!, c!], 'Team');
    expect(g).toMatchObject({ type: 'group', title: 'Team', lastSeq: 0, unreadCount: 0, lastMessage: null });
    const roles = Object.fromEntries(g.members.map((m: any) => [m.userId, m.role]));
    expect(roles).toEqual({ [a!.id]: 'owner', [b!.id]: 'member', [c!.id]: 'member' });
    const evs = await eventsFor(c!, 'conversation.updated');
    const ev = evs.find((e) => e.conversationId === g.id);
    expect(ev?.event).toMatchObject({ type: 'conversation.updated', conversation: { id: g.id, title: 'Team' } });
    expect(ev?.event).not.toHaveProperty('conversation.unreadCount');
  });

  it('unknown member ids are 404 and nothing is written', async () => {
    const [a, b] = await users(2);
    const before = (await req('GET', '/v1/conversations', { token: a!.accessToken })).body.items.length;
    const eventsBefore = (await eventsFor(a!)).length;
    const res = await req('POST', '/v1/conversations', { token: a!.accessToken, body: { type: 'group', title: 't', memberIds: [b!.id, randomUUID()] } });
    expect(res.status).toBe(404);
    expect((await req('GET', '/v1/conversations', { token: a!.accessToken })).body.items.length).toBe(before);
    expect((await req('GET', '/v1/conversations', { token: b!.accessToken })).body.items.length).toBe(0);
    expect((await eventsFor(a!)).length).toBe(eventsBefore);
  });

  it('[AF-I1] bad bodies are 400: unknown fields, long titles, duplicates, wrong types', async () => {
    const [a, b] = await users(2);
    const bad = [
      { type: 'group', title: 't', memberIds: [], extra: 1 },
      { type: 'group', title: 'x'.repeat(LIMITS.titleMaxChars + 1), memberIds: [] },
      { type: 'group', title: 't', memberIds: [b!.id, b!.id] },
      { type: 'group', title: '', memberIds: [] },
      { type: 'group', title: 't\u0000', memberIds: [] },
      { type: 'direct', userId: 'not-a-uuid' },
      { type: 'channel', userId: b!.id },
      { type: 'direct', userId: b!.id, title: 'x' },
    ];
    for (const body of bad) {
      const res = await req('POST', '/v1/conversations', { token: a!.accessToken, body });
      expect(res.status, JSON.stringify(body).slice(0, 80)).toBe(400);
    }
    expect((await req('GET', '/v1/conversations', { token: a!.accessToken })).body.items).toEqual([]);
    expect((await req('GET', '/v1/conversations?cursor=garbage', { token: a!.accessToken })).status).toBe(400);
    expect((await req('GET', '/v1/conversations?limit=0', { token: a!.accessToken })).status).toBe(400);
    expect((await req('GET', '/v1/conversations')).status).toBe(401);
  });

  it('[AF-I2] injection-looking titles are stored and returned verbatim; the tables survive', async () => {
    const [a] = await users(1);
    const titles = [`Robert'); DROP TABLE conversations;--`, `'; drop table messages; --`, `" OR 1=1 --`, 'Žluťoučký kůň 🐴 \\ %_ \u202e', `$1 $$ \\x00`];
    for (const title of titles) {
      const g = await group(a!, [], title);
      expect(g.title).toBe(title);
      expect((await req('GET', `/v1/conversations/${g.id}`, { token: a!.accessToken })).body.title).toBe(title);
      await send(a!, g.id, title);
    }
    const list = await req('GET', '/v1/conversations', { token: a!.accessToken });
    expect(list.body.items.map((c: any) => c.title).sort()).toEqual([...titles].sort());
    expect(list.body.items.every((c: any) => c.lastMessage.content.text === c.title)).toBe(true);
  });
});

describe('[C3] non-members learn nothing', () => {
  it('gets 404 for every conversation route, same as an unknown id', async () => {
    const [a, b, outsider] = await users(3);
    const g = await group(a!, [b!]);
    const msg = await send(a!, g.id);
    const t = outsider!.accessToken;
    const calls: [string, string, unknown?][] = [
      ['GET', `/v1/conversations/${g.id}`],
      ['PATCH', `/v1/conversations/${g.id}`, { title: 'mine' }],
      ['POST', `/v1/conversations/${g.id}/members`, { userId: outsider!.id }],
      ['PATCH', `/v1/conversations/${g.id}/members/${b!.id}`, { role: 'admin' }],
      ['DELETE', `/v1/conversations/${g.id}/members/${b!.id}`],
      ['DELETE', `/v1/conversations/${g.id}/members/${outsider!.id}`],
      ['GET', `/v1/conversations/${g.id}/messages`],
      ['POST', `/v1/conversations/${g.id}/messages`, { clientMsgId: 'x1', content: { type: 'text', text: 'hi' } }],
      ['PATCH', `/v1/conversations/${g.id}/messages/${msg.id}`, { content: { type: 'text', text: 'x' } }],
      ['DELETE', `/v1/conversations/${g.id}/messages/${msg.id}`],
      ['POST', `/v1/conversations/${g.id}/read`, { seq: 1 }],
    ];
    for (const [method, path, body] of calls) {
      const res = await req(method, path, { token: t, body });
      expect(res.status, `${method} ${path}`).toBe(404);
      expect(res.body.error.code).toBe('not_found');
      const unknown = await req(method, path.replace(g.id, randomUUID()), { token: t, body });
      expect(unknown.status).toBe(404);
      expect(Object.keys(unknown.body.error).sort()).toEqual(Object.keys(res.body.error).sort());
    }
    expect((await req('GET', '/v1/conversations', { token: t })).body.items).toEqual([]);
    const member = await s.app.services.conversations.requireMember(auth(a!), g.id);
    expect(member.role).toBe('owner');
    await expect(s.app.services.conversations.requireMember(auth(outsider!), g.id)).rejects.toMatchObject({ code: 'not_found' });
    expect((await s.app.services.conversations.get(auth(b!), g.id)).id).toBe(g.id);
  });
});

describe('[C2] [AF-A8] roles', () => {
  it('owners and admins add; only owners grant roles; admins cannot remove owners or admins; members cannot manage', async () => {
    const [owner, admin, m1, m2, m3, m4] = await users(6);
    const g = await group(owner!, [m1!]);
    const path = `/v1/conversations/${g.id}/members`;
    const add = (by: TestUser, u: TestUser, role?: string) => req('POST', path, { token: by.accessToken, body: { userId: u.id, ...(role ? { role } : {}) } });

    const added = await add(owner!, admin!, 'admin');
    expect(added.status).toBe(201);
    expect(added.body).toMatchObject({ userId: admin!.id, role: 'admin' });
    expect((await add(owner!, admin!)).status).toBe(409);
    expect((await add(m1!, m2!)).status).toBe(403);
    expect((await add(admin!, m2!, 'admin')).status).toBe(403);
    expect((await add(admin!, m2!)).status).toBe(201);
    expect((await add(admin!, m3!)).status).toBe(201);
    expect((await req('POST', path, { token: owner!.accessToken, body: { userId: randomUUID() } })).status).toBe(404);

    const role = (by: TestUser, u: TestUser, r: string) => req('PATCH', `${path}/${u.id}`, { token: by.accessToken, body: { role: r } });
    expect((await role(admin!, m2!, 'admin')).status).toBe(403);
    expect((await role(m1!, m2!, 'admin')).status).toBe(403);
    expect((await role(owner!, m4!, 'admin')).status).toBe(404);
    const promoted = await role(owner!, m2!, 'admin');
    expect(promoted.status).toBe(200);
    expect(promoted.body).toMatchObject({ userId: m2!.id, role: 'admin' });

    const remove = (by: TestUser, u: TestUser) => req('DELETE', `${path}/${u.id}`, { token: by.accessToken });
    expect((await remove(admin!, owner!)).status).toBe(403);
    expect((await remove(admin!, m2!)).status).toBe(403);
    expect((await remove(m1!, m3!)).status).toBe(403);
    expect((await remove(admin!, m3!)).status).toBe(204);
    expect((await remove(admin!, m3!)).status).toBe(404);
    expect((await remove(owner!, m2!)).status).toBe(204);

    // Title: owners and admins only.
    expect((await req('PATCH', `/v1/conversations/${g.id}`, { token: m1!.accessToken, body: { title: 'nope' } })).status).toBe(403);
    const renamed = await req('PATCH', `/v1/conversations/${g.id}`, { token: admin!.accessToken, body: { title: 'Renamed' } });
    expect(renamed.status).toBe(200);
    expect(renamed.body.title).toBe('Renamed');

    const members = (await req('GET', `/v1/conversations/${g.id}`, { token: owner!.accessToken })).body.members;
    expect(Object.fromEntries(members.map((m: any) => [m.userId, m.role]))).toEqual({ [owner!.id]: 'owner', [admin!.id]: 'admin', [m1!.id]: 'member' });
    // The removed user lost access.
    expect((await req('GET', `/v1/conversations/${g.id}`, { token: m3!.accessToken })).status).toBe(404);
  });

  it('the last owner cannot leave or be demoted (409 last_owner); with a second owner they can', async () => {
    const [owner, other, m] = await users(3);
    const g = await group(owner!, [other!, m!]);
    const path = `/v1/conversations/${g.id}/members`;
    const demote = await req('PATCH', `${path}/${owner!.id}`, { token: owner!.accessToken, body: { role: 'member' } });
    expect(demote.status).toBe(409);
    expect(demote.body.error.code).toBe('last_owner');
    const leave = await req('DELETE', `${path}/${owner!.id}`, { token: owner!.accessToken });
    expect(leave.status).toBe(409);
    expect(leave.body.error.code).toBe('last_owner');

    expect((await req('PATCH', `${path}/${other!.id}`, { token: owner!.accessToken, body: { role: 'owner' } })).status).toBe(200);
    // Two owners demoting each other at once: one must lose, the group keeps an owner.
    const both = await Promise.all([
      req('PATCH', `${path}/${other!.id}`, { token: owner!.accessToken, body: { role: 'member' } }),
      req('PATCH', `${path}/${owner!.id}`, { token: other!.accessToken, body: { role: 'member' } }),
    ]);
    // Serialised on the conversation row: the second sees it is no longer an owner (403) or the last one (409).
    const statuses = both.map((r) => r.status).sort((x, y) => x - y);
    expect(statuses[0]).toBe(200);
    expect([403, 409]).toContain(statuses[1]);
    const after = (await req('GET', `/v1/conversations/${g.id}`, { token: m!.accessToken })).body.members;
    const owners = after.filter((x: any) => x.role === 'owner');
    expect(owners).toHaveLength(1);
    const stillOwner = owners[0].userId === owner!.id ? owner! : other!;
    const demoted = stillOwner === owner ? other! : owner!;
    expect((await req('PATCH', `${path}/${demoted.id}`, { token: stillOwner.accessToken, body: { role: 'owner' } })).status).toBe(200);
    expect((await req('DELETE', `${path}/${stillOwner.id}`, { token: stillOwner.accessToken })).status).toBe(204);
    expect((await req('GET', `/v1/conversations/${g.id}`, { token: stillOwner.accessToken })).status).toBe(404);
    // A member leaves freely.
    expect((await req('DELETE', `${path}/${m!.id}`, { token: m!.accessToken })).status).toBe(204);
  });

  it('membership changes append member.added / member.updated / member.removed; the removed user gets theirs [E2]', async () => {
    const [owner, a, b] = await users(3);
    const g = await group(owner!, [a!]);
    const path = `/v1/conversations/${g.id}/members`;
    await req('POST', path, { token: owner!.accessToken, body: { userId: b!.id } });
    await req('PATCH', `${path}/${b!.id}`, { token: owner!.accessToken, body: { role: 'admin' } });
    await req('DELETE', `${path}/${b!.id}`, { token: owner!.accessToken });

    const forA = (await eventsFor(a!)).filter((e) => e.conversationId === g.id).map((e) => e.event);
    expect(forA.map((e) => e.type)).toEqual(['conversation.updated', 'member.added', 'member.updated', 'member.removed']);
    expect(forA[1]).toMatchObject({ conversationId: g.id, member: { userId: b!.id, role: 'member' }, by: owner!.id });
    expect(forA[2]).toMatchObject({ member: { userId: b!.id, role: 'admin' }, by: owner!.id });
    expect(forA[3]).toEqual({ type: 'member.removed', conversationId: g.id, userId: b!.id, by: owner!.id });

    const forB = await eventsFor(b!, 'member.removed');
    expect(forB.map((e) => e.event)).toEqual([{ type: 'member.removed', conversationId: g.id, userId: b!.id, by: owner!.id }]);
    expect(forB[0]!.userId).toBe(b!.id);
  });

  it('memberIds and peersOf serve fan-out and presence', async () => {
    const [a, b, c, d] = await users(4);
    const g = await group(a!, [b!]);
    await req('POST', '/v1/conversations', { token: a!.accessToken, body: { type: 'direct', userId: c!.id } });
    const convs = s.app.services.conversations;
    expect((await convs.memberIds(g.id)).sort()).toEqual([a!.id, b!.id].sort());
    expect((await convs.peersOf(a!.id)).sort()).toEqual([b!.id, c!.id].sort());
    expect(await convs.peersOf(b!.id)).toEqual([a!.id]);
    expect(await convs.peersOf(d!.id)).toEqual([]);
  });
});

describe('[C4] listing', () => {
  it('pages by last activity with last message and unread count', async () => {
    const [a, b] = await users(2);
    const groups = [];
    for (let i = 0; i < 5; i++) groups.push(await group(a!, [b!], `c${i}`));
    // Activity on the oldest moves it to the top.
    await send(b!, groups[0].id, 'one');
    await send(b!, groups[0].id, 'two');
    const last = await send(b!, groups[0].id, 'three');
    await send(a!, groups[0].id, 'mine');

    const seen: any[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 5; page++) {
      const res = await req('GET', `/v1/conversations?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`, { token: a!.accessToken });
      expect(res.status).toBe(200);
      expect(res.body.items.length).toBeLessThanOrEqual(2);
      seen.push(...res.body.items);
      cursor = res.body.nextCursor;
      if (!cursor) break;
    }
    expect(seen.map((c) => c.title)).toEqual(['c0', 'c4', 'c3', 'c2', 'c1']);
    const top = seen[0];
    expect(top).toMatchObject({ lastSeq: 4, readSeq: 0, unreadCount: 3 });
    expect(top.lastMessage).toMatchObject({ seq: 4, senderId: a!.id, content: { type: 'text', text: 'mine' } });
    expect(seen[1]).toMatchObject({ lastSeq: 0, unreadCount: 0, lastMessage: null });

    // Read up to seq 2: one unread left. A deleted unread message stops counting.
    expect((await req('POST', `/v1/conversations/${top.id}/read`, { token: a!.accessToken, body: { seq: 2 } })).status).toBe(204);
    let again = (await req('GET', `/v1/conversations/${top.id}`, { token: a!.accessToken })).body;
    expect(again).toMatchObject({ readSeq: 2, unreadCount: 1 });
    await req('DELETE', `/v1/conversations/${top.id}/messages/${last.id}`, { token: b!.accessToken });
    again = (await req('GET', `/v1/conversations/${top.id}`, { token: a!.accessToken })).body;
    expect(again.unreadCount).toBe(0);
    // b sent 3, read nothing, and a's own message is unread for b.
    const forB = (await req('GET', `/v1/conversations/${top.id}`, { token: b!.accessToken })).body;
    expect(forB).toMatchObject({ readSeq: 0, unreadCount: 1 });
  });

  it('[AF-D4] a page costs the same number of queries for 3 and 30 conversations', async () => {
    const [few, many, peer] = await users(3);
    for (let i = 0; i < 3; i++) await send(few!, (await group(few!, [peer!])).id);
    for (let i = 0; i < 30; i++) {
      const g = await group(many!, [peer!]);
      if (i % 2) await send(peer!, g.id);
    }
    const stats = s.app.ctx.database.stats;
    // The counter is app-wide and background work (the event tailer) also queries: take the quietest of a few runs.
    const count = async (u: TestUser) => {
      let best = { queries: Infinity, items: 0 };
      for (let i = 0; i < 3; i++) {
        const before = stats.queries;
        const page = await s.app.services.conversations.list(auth(u), { limit: 50 });
        const queries = stats.queries - before;
        if (queries < best.queries) best = { queries, items: page.items.length };
      }
      return best;
    };
    const small = await count(few!);
    const big = await count(many!);
    expect(small.items).toBe(3);
    expect(big.items).toBe(30);
    expect(big.queries).toBe(small.queries);
    expect(big.queries).toBeLessThanOrEqual(2);
  });
});
