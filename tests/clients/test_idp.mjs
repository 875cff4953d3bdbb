// A real OpenID provider for the sign-in tests: panva's `oidc-provider`
// (a certified implementation), in one of three profiles an enterprise IdP
// takes (IDP_PROFILE):
//   keycloak     dynamic registration and resource indicators: MCP clients
//                sign in here directly; JWT access tokens for the MCP URL
//                with `org` and `scope`.
//   confidential no registration; one confidential client for the gateway
//                (IDP_GATEWAY_CALLBACK); ID tokens carry `org`.
//   entra        like confidential, and Entra-shaped: OpenID discovery only
//                (no RFC 8414 document), `resource` refused at the
//                authorization endpoint (AADSTS9010010), the organisation in
//                `tid`, access tokens for its own application audience
//                (api://mcp-image-gateway) with scopes in `scp`.
// Its signing keys come from IDP_JWKS_FILE (private JWKs), so a test can mint
// what this IdP would (an identity assertion grant). Logins are `user` or
// `user@org` (organisation `acme` when absent); any password.
import { readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.IDP_PORT);
const profile = process.env.IDP_PROFILE ?? 'keycloak';
const issuer = `http://127.0.0.1:${port}`;
const entra = profile === 'entra';
const APP_AUDIENCE = 'api://mcp-image-gateway';
const jwks = JSON.parse(readFileSync(process.env.IDP_JWKS_FILE, 'utf8'));

const orgOf = (login) => (login.includes('@') ? login.split('@')[1] : 'acme');
// Entra names tenants by GUID: one per organisation, stable.
const tidOf = (org) => {
  const hex = Buffer.from(org.padEnd(16, '0')).toString('hex').slice(0, 32);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
};

const clients = profile === 'keycloak' ? [] : [{
  client_id: process.env.IDP_GATEWAY_CLIENT_ID ?? 'mcp-gateway',
  client_secret: process.env.IDP_GATEWAY_CLIENT_SECRET ?? 'gateway-secret',
  redirect_uris: [process.env.IDP_GATEWAY_CALLBACK],
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
}];

const provider = new Provider(issuer, {
  jwks,
  clients,
  // The keys are EC P-256: every client's ID tokens are ES256.
  clientDefaults: { id_token_signed_response_alg: 'ES256', grant_types: ['authorization_code'], response_types: ['code'] },
  scopes: ['openid', 'profile', 'email', 'offline_access', 'images:generate'],
  claims: entra ? { openid: ['sub', 'tid', 'oid'] } : { openid: ['sub', 'org'] },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  findAccount: (_ctx, id) => ({
    accountId: id,
    claims: () => (entra ? { sub: id, tid: tidOf(orgOf(id)), oid: id } : { sub: id, org: orgOf(id) }),
  }),
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  extraTokenClaims: (_ctx, token) => (entra
    ? { tid: tidOf(orgOf(token.accountId)), scp: token.scope }
    : { org: orgOf(token.accountId) }),
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: profile === 'keycloak' },
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, _client, oneOf) => oneOf ?? (entra ? APP_AUDIENCE : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        const ours = entra ? resource === APP_AUDIENCE : /^http:\/\/127\.0\.0\.1:\d+\/mcp$/.test(resource);
        if (!ours) throw new errors.InvalidTarget();
        return { audience: resource, scope: 'images:generate', accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } };
      },
    },
  },
});
provider.proxy = false;

if (entra) {
  provider.use(async (ctx, next) => {
    if (ctx.path === '/.well-known/oauth-authorization-server') {
      ctx.status = 404;
      ctx.body = { error: 'not_found' };
      return;
    }
    if (ctx.path === '/auth' && ctx.query.resource) {
      ctx.status = 400;
      ctx.body = 'AADSTS9010010: The resource parameter provided in the request doesn\'t match with the requested scopes.';
      return;
    }
    await next();
  });
}

provider.listen(port, '127.0.0.1', () => {
  console.log(`test IdP (${profile}) at ${issuer}`);
});
