// web_chat.mjs - the node's web page (GET /) in headless Chromium: one
// conversation whose turns go to node A, node B, then A again; each turn must
// show the node that answered, turn numbers 1, 2, 3 and a context that grows.
// Between turns 2 and 3 two bad nodes (a wrong path, a port nobody listens on)
// must show an error without losing the conversation.
//
// With DC_WEB_KEY=KEY (nodes started with --api-keys) instead: a wrong key in
// the page's key field shows 401, then KEY carries two turns, A then B.
//
// usage: NODE_PATH=third_party/npm-web/node_modules node web_chat.mjs URL_A URL_B SCREENSHOT.png
// Prints one JSON line {session_id, turns: [...]} and exits 0, or the reason and exits 1.
import { createRequire } from 'node:module';
import net from 'node:net';

const require = createRequire(import.meta.url); // honours NODE_PATH, unlike import
const { chromium } = require('playwright-core');

const [urlA, urlB, shot] = process.argv.slice(2);
if (!urlA || !urlB || !shot) {
  console.error('usage: node web_chat.mjs URL_A URL_B SCREENSHOT.png');
  process.exit(2);
}
const WAIT_MS = 300000;

function check(cond, what) {
  if (!cond) throw new Error(what);
}

function deadPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const browser = await chromium.launch({
  executablePath: process.env.DC_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
  headless: true,
});
let code = 1;
try {
  const page = await browser.newPage({ viewport: { width: 960, height: 1000 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));

  // Sends one message to `url`; returns the log entry that came back: the
  // assistant turn or the error.
  async function send(url, text) {
    await page.selectOption('#node', url);
    const before = await page.locator('#log > .turn, #log > .error').count();
    await page.fill('#prompt', text);
    await page.click('#send');
    await page.waitForFunction(
      (n) => document.querySelectorAll('#log > .turn, #log > .error').length > n &&
        !document.getElementById('send').disabled,
      before, { timeout: WAIT_MS });
    return page.locator('#log > .turn, #log > .error').last();
  }

  async function turn(url, text, want) {
    const el = await send(url, text);
    const cls = await el.getAttribute('class');
    check(/\bturn\b/.test(cls), `turn ${want.turn} to ${url}: ${await el.textContent()}`);
    const t = {
      turn: Number(await el.getAttribute('data-turn')),
      node: await el.getAttribute('data-node'),
      shown_node: await el.locator('.node').textContent(),
      prompt_tokens: Number(await el.locator('.tokens').textContent()),
      text: await el.locator('.text').textContent(),
    };
    check(t.turn === want.turn, `turn number ${t.turn}, expected ${want.turn}`);
    check(t.node === want.node && t.shown_node === want.node,
      `turn ${want.turn} answered by ${t.node} (shown ${t.shown_node}), expected ${want.node}`);
    check(t.prompt_tokens > 0, `turn ${want.turn}: no prompt tokens shown`);
    return t;
  }

  async function expectError(url, text, pattern) {
    const el = await send(url, text);
    const cls = await el.getAttribute('class');
    const msg = await el.textContent();
    check(/\berror\b/.test(cls), `a request to ${url} did not show an error (${cls}: ${msg})`);
    check(pattern.test(msg), `error for ${url} is "${msg}", expected ${pattern}`);
    check(await page.locator('#log > .user').last().evaluate((u) => u.classList.contains('failed')),
      'the failed message is not marked failed');
    check(await page.inputValue('#prompt') === text, 'the failed message was not put back to be sent again');
    return msg;
  }

  await page.goto(urlA + '/', { timeout: 60000 });
  check(await page.title() === 'DisCEdge', `page title "${await page.title()}"`);
  check(await page.inputValue('#nodes') === urlA, `default node list "${await page.inputValue('#nodes')}", expected ${urlA}`);
  await page.fill('#nodes', `${urlA},${urlB}`);
  check((await page.locator('#node option').count()) === 2, 'the node list did not become 2 options');
  const sessionShown = async () => (await page.textContent('#status')).match(/session ([0-9a-f]+)/)?.[1];

  // A, B, A with two bad nodes between turns 2 and 3
  async function conversation() {
    const turns = [];
    // markup in a message stays text (the page never uses innerHTML)
    turns.push(await turn(urlA, 'Hi <b>there</b>! What is an edge server?', { turn: 1, node: 'edge-1' }));
    check(await page.locator('#log b').count() === 0, 'markup in a message was rendered as HTML');
    const sid = await sessionShown();
    check(sid, `no session id shown: "${await page.textContent('#status')}"`);
    turns.push(await turn(urlB, 'Why does it help latency?', { turn: 2, node: 'edge-2' }));

    // bad nodes: an HTTP error body from a real node, then no server at all
    const dead = `http://127.0.0.1:${await deadPort()}`;
    await page.fill('#nodes', `${urlA},${urlB},${urlA}/nope,${dead}`);
    const errors = [
      await expectError(`${urlA}/nope`, 'Anyone there?', /answered 404/),
      await expectError(dead, 'Anyone there?', /could not reach/),
    ];
    check(await page.locator('#log > .turn').count() === 2, 'an error lost the conversation');
    check((await page.textContent('#status')).includes(`session ${sid} \u00b7 turn 2`),
      `status after the errors: "${await page.textContent('#status')}"`);

    turns.push(await turn(urlA, 'Thanks! Summarize in one line.', { turn: 3, node: 'edge-1' }));
    for (let i = 1; i < turns.length; i++) {
      check(turns[i].prompt_tokens > turns[i - 1].prompt_tokens,
        `context did not grow: turn ${i} had ${turns[i - 1].prompt_tokens} prompt tokens, turn ${i + 1} ${turns[i].prompt_tokens}`);
    }
    await page.screenshot({ path: shot, fullPage: true });

    // a new conversation starts empty
    await page.click('#new');
    check(await page.locator('#log > *').count() === 0, '"New conversation" did not clear the log');
    check(await page.textContent('#status') === 'new conversation', 'status after "New conversation"');
    return { session_id: sid, turns, errors };
  }

  // nodes with --api-keys: a wrong key is refused and shown; the right one
  // (sent as Authorization: Bearer) is accepted by both nodes
  async function keyed(key) {
    await page.fill('#key', 'not-the-key-' + key);
    const errors = [await expectError(urlA, 'Hello?', /answered 401 - invalid_api_key/)];
    check(await page.locator('#log > .turn').count() === 0, 'a refused request made a turn');
    await page.fill('#key', key);
    const turns = [await turn(urlA, 'Hello?', { turn: 1, node: 'edge-1' }),
      await turn(urlB, 'And now?', { turn: 2, node: 'edge-2' })];
    await page.screenshot({ path: shot, fullPage: true });
    return { session_id: await sessionShown(), turns, errors };
  }

  const result = process.env.DC_WEB_KEY ? await keyed(process.env.DC_WEB_KEY) : await conversation();
  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join('; ')}`);
  console.log(JSON.stringify(result));
  code = 0;
} catch (e) {
  console.log(`web_chat: FAIL: ${e.message}`);
} finally {
  await browser.close();
}
process.exit(code);
