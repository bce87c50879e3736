// A real OpenID Connect provider for the portal's AUTH_MODE=oidc tests: panva's certified
// `oidc-provider`, on loopback, with a minimal login form and test users in different groups.
//
//   PORT=0 USERS_FILE=users.json REDIRECT_URIS=http://localhost:8000/oidc/callback/ node server.mjs
//
// Prints one line `ready <issuer>` on stdout once it listens (PORT=0 picks a free port).
// - Clients: `dataflare-portal` (confidential, client_secret_post; the portal's sign-in),
//   `dataflare-cli` (public; API tokens for the tests) and `dataflare-cli-short` (public; API tokens
//   that expire after SHORT_TTL seconds). PKCE (S256) is required for every client.
// - Resource indicators: `urn:dataflare:api` (the portal's API) and `urn:other:api` give RS256 JWT
//   access tokens with that audience, carrying `groups` and `preferred_username`.
// - Users are read from USERS_FILE at every sign-in and token ({"name": {"password", "email",
//   "groups": [...]}}), so a test changes someone's groups as an administrator would at the provider.
// - RP-initiated logout (end_session_endpoint) is on; post_logout_redirect_uris = LOGOUT_URIS.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const host = '127.0.0.1';
const port = Number(process.env.PORT || 0);
const usersFile = process.env.USERS_FILE;
const redirectUris = (process.env.REDIRECT_URIS || '').split(',').filter(Boolean);
const logoutUris = (process.env.LOGOUT_URIS || '').split(',').filter(Boolean);
const shortTtl = Number(process.env.SHORT_TTL || 2);
const cliRedirect = 'http://127.0.0.1:9/cli-callback';
const RESOURCES = ['urn:dataflare:api', 'urn:other:api'];

function users() {
  return JSON.parse(readFileSync(usersFile, 'utf8'));
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (body) => `<!doctype html><html><head><meta charset="utf-8"><title>Test provider sign-in</title></head>
<body><h1>Test provider</h1>${body}</body></html>`;

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

function start(issuer, listenPort) {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'dataflare-portal',
        client_secret: process.env.CLIENT_SECRET || 'portal-test-secret',
        token_endpoint_auth_method: 'client_secret_post',
        redirect_uris: redirectUris.length ? redirectUris : ['http://127.0.0.1:9/unused'],
        post_logout_redirect_uris: logoutUris,
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
      ...['dataflare-cli', 'dataflare-cli-short'].map((id) => ({
        client_id: id,
        token_endpoint_auth_method: 'none',
        redirect_uris: [cliRedirect],
        grant_types: ['authorization_code'],
        response_types: ['code'],
      })),
    ],
    jwks: { keys: [jwk] },
    pkce: { required: () => true },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'profile', 'groups'],
    async findAccount(ctx, id) {
      const user = users()[id];
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: user.email || `${id}@example.test`,
            email_verified: true,
            name: user.name || id,
            preferred_username: id,
            groups: user.groups || [],
          };
        },
      };
    },
    // First-party clients: no consent screen; the grant covers every scope and resource on offer.
    async loadExistingGrant(ctx) {
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile groups');
      grant.addOIDCClaims(['email', 'email_verified', 'name', 'preferred_username', 'groups']);
      for (const resource of RESOURCES) grant.addResourceScope(resource, 'api');
      await grant.save();
      return grant;
    },
    async extraTokenClaims(ctx, token) {
      const user = token.accountId ? users()[token.accountId] : undefined;
      return user ? { groups: user.groups || [], preferred_username: token.accountId } : undefined;
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client, oneOf) => oneOf,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => {
          if (!RESOURCES.includes(resource)) throw new Provider.errors.InvalidTarget();
          return {
            scope: 'api',
            audience: resource,
            accessTokenFormat: 'jwt',
            accessTokenTTL: client.clientId === 'dataflare-cli-short' ? shortTtl : 600,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    ttl: { AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
    cookies: { keys: [randomUUID()] },
  });
  provider.proxy = false;

  // The login form (the provider's own interaction endpoints; no dev shortcuts): checks the password.
  provider.use(async (ctx, next) => {
    const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (!match) return next();
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (ctx.method === 'GET' && !match[2]) {
      ctx.type = 'html';
      ctx.body = page(`<form method="post" action="/interaction/${escape(details.uid)}/login">
<label>Username <input name="login" id="login" autofocus></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="sign-in">Sign in</button></form>`);
      return undefined;
    }
    if (ctx.method === 'POST' && match[2]) {
      const form = await readForm(ctx.req);
      const user = users()[form.login];
      if (!user || user.password !== form.password) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = page(`<p id="error">Wrong username or password.</p>
<form method="post" action="/interaction/${escape(details.uid)}/login">
<label>Username <input name="login" id="login"></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="sign-in">Sign in</button></form>`);
        return undefined;
      }
      return provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: form.login } }, {
        mergeWithLastSubmission: false,
      });
    }
    return next();
  });

  const server = provider.listen(listenPort, host, () => {
    process.stdout.write(`ready ${issuer}\n`);
  });
  return server;
}

// PORT=0: find a free port first, so the issuer names the port it listens on.
if (port === 0) {
  const { createServer } = await import('node:net');
  const probe = createServer();
  probe.listen(0, host, () => {
    const free = probe.address().port;
    probe.close(() => start(`http://${host}:${free}`, free));
  });
} else {
  start(`http://${host}:${port}`, port);
}

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
