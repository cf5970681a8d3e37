// Drives a generated service's Swagger UI in Debian's Chromium, as a person would: every route is
// listed with the scopes it needs; "Authorize" with the admin key; "Try it out" on create-key gives
// 201 and a key; with that key a guarded route answers, without its scope it is refused. Nothing is
// fetched from outside the service. Run by tests/tests/browser.rs, which passes:
//   BASE_URL     http://127.0.0.1:<port>
//   DOCS_PATH    where Swagger UI is mounted (/docs)
//   KEYS_PREFIX  where the key routes are (/api/v1/api-keys)
//   ADMIN_KEY    a key holding the admin scope
//   SCREENSHOTS  a folder for the screenshots
// Prints one line per step, and `screenshot <path>` for each picture taken.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('BASE_URL');
const docs = env('DOCS_PATH');
const keys = env('KEYS_PREFIX');
const adminKey = env('ADMIN_KEY');
const shots = env('SCREENSHOTS');
mkdirSync(shots, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(message);
  console.log(`ok: ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage', '--disable-gpu'],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);

  // Anything not served by the service itself is refused and remembered: the UI must be vendored.
  const outside = [];
  const origin = new URL(base).origin;
  await page.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith('data:') || new URL(url).origin === origin) return route.continue();
    outside.push(url);
    return route.abort();
  });

  let shot = 0;
  const screenshot = async (name) => {
    shot += 1;
    const path = join(shots, `${String(shot).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot ${path}`);
  };

  await page.goto(`${base}${docs}/`);
  await page.waitForSelector('.opblock');
  await screenshot('docs-loaded');

  const spec = await (await fetch(`${base}${docs}/openapi.json`)).json();
  const operation = (method, path) =>
    page
      .locator(`.opblock.opblock-${method}`)
      .filter({ has: page.locator(`.opblock-summary-path[data-path="${path}"]`) });
  const expand = async (block) => {
    if (!(await block.evaluate((el) => el.classList.contains('is-open')))) {
      await block.locator('.opblock-summary').first().click();
    }
    await block.locator('.opblock-body').waitFor();
  };
  const collapse = async (block) => {
    if (await block.evaluate((el) => el.classList.contains('is-open'))) {
      await block.locator('.opblock-summary').first().click();
    }
  };

  // Every route of the document is listed, and a guarded one shows the scopes it needs.
  let routes = 0;
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const block = operation(method, path);
      check((await block.count()) === 1, `${method.toUpperCase()} ${path} is listed`);
      routes += 1;
      const scopes = new Set((op.security ?? []).flatMap((requirement) => Object.values(requirement).flat()));
      if (scopes.size > 0) {
        await expand(block);
        for (const scope of scopes) {
          // The body renders in steps: wait for the text rather than read it once.
          const named = await block
            .locator('.opblock-description-wrapper', { hasText: scope })
            .waitFor({ timeout: 5_000 })
            .then(() => true, () => false);
          check(named, `${method.toUpperCase()} ${path} names scope ${scope}`);
        }
        await collapse(block);
      }
    }
  }
  check(routes === Object.values(spec.paths).flatMap(Object.keys).length, `all ${routes} operations listed`);

  const authorize = async (key) => {
    await page.locator('.auth-wrapper button.authorize').click();
    const modal = page.locator('.modal-ux');
    await modal.waitFor();
    const apiKey = modal.locator('.auth-container').filter({ hasText: 'api_key' }).first();
    const logout = apiKey.locator('button', { hasText: 'Logout' });
    if ((await logout.count()) > 0) await logout.click();
    await apiKey.locator('input').fill(key);
    await apiKey.locator('button', { hasText: 'Authorize' }).click();
    await apiKey.locator('button', { hasText: 'Logout' }).waitFor();
    await modal.locator('button.btn-done').first().click();
    await modal.waitFor({ state: 'detached' });
  };

  const tryOut = async (method, path, { body, params } = {}) => {
    const block = operation(method, path);
    await expand(block);
    const tryButton = block.locator('button.try-out__btn');
    if ((await tryButton.innerText()).trim() === 'Try it out') await tryButton.click();
    if (body) await block.locator('textarea.body-param__text').fill(JSON.stringify(body));
    for (const [name, value] of Object.entries(params ?? {})) {
      await block.locator(`tr[data-param-name="${name}"] input`).fill(value);
    }
    const responses = block.locator('.live-responses-table');
    // An earlier call's response would be read as this one's: clear it first.
    const clear = block.locator('button.btn-clear');
    if ((await clear.count()) > 0) {
      await clear.first().click();
      await responses.locator('tr.response').first().waitFor({ state: 'detached' });
    }
    await block.locator('button.execute').click();
    const row = responses.locator('tr.response');
    await row.first().waitFor();
    const status = Number((await row.locator('.response-col_status').first().innerText()).trim());
    const pre = row.locator('.response-col_description pre');
    const text = (await pre.count()) > 0 ? await pre.first().innerText() : '';
    return { status, text, block };
  };

  await authorize(adminKey);
  await screenshot('authorized-as-admin');

  const created = await tryOut('post', keys, { body: { name: 'from-swagger-ui', scopes: ['admin:delete'] } });
  check(created.status === 201, `"Try it out" on create-key answers 201 (got ${created.status})`);
  const key = JSON.parse(created.text).key;
  check(typeof key === 'string' && key.length > 40, 'the response shows the new key');
  await created.block.scrollIntoViewIfNeeded();
  await screenshot('key-created');
  await collapse(created.block);

  await authorize(key);
  const any = await tryOut('get', '/protected');
  check(any.status === 200, `GET /protected with the new key answers 200 (got ${any.status})`);
  await collapse(any.block);
  const allowed = await tryOut('delete', '/api/admin/users/{user_id}', { params: { user_id: '42' } });
  check(allowed.status === 204, `DELETE /api/admin/users/42 with admin:delete answers 204 (got ${allowed.status})`);
  await allowed.block.scrollIntoViewIfNeeded();
  await screenshot('guarded-route-allowed');

  // The admin key manages keys but does not hold admin:delete.
  await authorize(adminKey);
  const refused = await tryOut('delete', '/api/admin/users/{user_id}', { params: { user_id: '42' } });
  check(refused.status === 403, `the same route without the scope answers 403 (got ${refused.status})`);
  check(JSON.parse(refused.text).code === 'insufficient_scope', 'with code insufficient_scope');
  await refused.block.scrollIntoViewIfNeeded();
  await screenshot('guarded-route-refused');

  check(outside.length === 0, `nothing fetched from outside the service (${outside.join(', ')})`);
} catch (err) {
  failed = true;
  console.error(`FAILED: ${err.stack ?? err}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
