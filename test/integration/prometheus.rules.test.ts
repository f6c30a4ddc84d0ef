import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { realStack } from '../support/real-stack.js';

/**
 * deploy/prometheus and deploy/grafana checked without a running Prometheus:
 * `promtool check rules`, the rules' unit tests (`promtool test rules`), that those tests
 * cover every alert both ways and can fail, and that the dashboard only uses series and
 * recording rules that exist. test/e2e/prometheus.test.ts evaluates all of it live.
 */

const run = promisify(execFile);
const REPO = resolve(import.meta.dirname, '../..');
const RULES = join(REPO, 'deploy/prometheus/cdrom-worker.rules.yaml');
const RULE_TESTS = join(REPO, 'deploy/prometheus/cdrom-worker.rules.test.yaml');
const DASHBOARD = join(REPO, 'deploy/grafana/cdrom-worker.json');
const PROMTOOL = '/usr/bin/promtool';

interface Rule {
  readonly alert?: string;
  readonly record?: string;
  readonly expr: string;
  readonly for?: string;
  readonly labels?: Record<string, string>;
  readonly annotations?: Record<string, string>;
}
interface RuleTest {
  readonly alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[];
}

async function rules(): Promise<Rule[]> {
  const doc = parse(await readFile(RULES, 'utf8')) as { groups: { rules: Rule[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

/** promtool's exit code and output; a non-zero exit is a result here, not an error. */
async function promtool(...args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(PROMTOOL, args, { timeout: 60_000 });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

describe.runIf(realStack('promtool tests', existsSync(PROMTOOL), `no ${PROMTOOL}: scripts/host-setup.sh installs Debian's prometheus package`))('Prometheus rules and Grafana dashboard', () => {
  it('promtool check rules accepts the rules file', async () => {
    const r = await promtool('check', 'rules', RULES);
    expect(r.out).toContain('SUCCESS');
    expect(r.code).toBe(0);
  });

  it("the rules' unit tests pass", async () => {
    const r = await promtool('test', 'rules', RULE_TESTS);
    expect(r.code, r.out).toBe(0);
  });

  it('every alert has a severity, a summary and a description, and unit tests where it fires and where it does not', async () => {
    const tests = (parse(await readFile(RULE_TESTS, 'utf8')) as { tests: RuleTest[] }).tests.flatMap((t) => t.alert_rule_test ?? []);
    const alerts = (await rules()).filter((r) => r.alert !== undefined);
    expect(alerts.length).toBeGreaterThanOrEqual(9);
    for (const a of alerts) {
      expect(['critical', 'warning'], a.alert).toContain(a.labels?.['severity']);
      expect(a.annotations?.['summary'], a.alert).toBeTruthy();
      expect(a.annotations?.['description'], a.alert).toBeTruthy();
      const mine = tests.filter((t) => t.alertname === a.alert);
      expect(mine.some((t) => t.exp_alerts.length > 0), `${a.alert} never fires in the unit tests`).toBe(true);
      expect(mine.some((t) => t.exp_alerts.length === 0), `${a.alert} has no case where it must not fire`).toBe(true);
    }
  });

  it('the unit tests fail when the alerts lose their `for` (the "too brief to fire" cases bite)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cdw-rules-'));
    try {
      const text = await readFile(RULES, 'utf8');
      const mutated = text.replace(/^\s+for: .*\n/gm, '');
      expect(mutated).not.toBe(text);
      await writeFile(join(dir, 'cdrom-worker.rules.yaml'), mutated);
      await copyFile(RULE_TESTS, join(dir, 'cdrom-worker.rules.test.yaml'));
      const r = await promtool('test', 'rules', join(dir, 'cdrom-worker.rules.test.yaml'));
      expect(r.code).not.toBe(0);
      expect(r.out).toContain('FAILED');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the dashboard: schema 39, a Prometheus datasource variable every panel uses, a host variable, and only recording rules that exist', async () => {
    const dash = JSON.parse(await readFile(DASHBOARD, 'utf8')) as {
      schemaVersion: number;
      templating: { list: { name: string; type: string; query: unknown }[] };
      panels: { type: string; title: string; datasource?: { uid: string }; targets?: { expr: string; datasource?: { uid: string } }[] }[];
    };
    expect(dash.schemaVersion).toBe(39);
    const vars = new Map(dash.templating.list.map((v) => [v.name, v]));
    expect(vars.get('datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    expect(JSON.stringify(vars.get('host')?.query)).toContain('label_values(cdrom_ready, host)');
    const recorded = new Set((await rules()).flatMap((r) => (r.record === undefined ? [] : [r.record])));
    const panels = dash.panels.filter((p) => p.type !== 'row');
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    for (const p of panels) {
      expect(p.datasource?.uid, p.title).toBe('${datasource}');
      for (const t of p.targets ?? []) {
        expect(t.datasource?.uid, p.title).toBe('${datasource}');
        expect(t.expr, p.title).toMatch(/host=~"\$host"/);
      }
    }
    for (const name of exprs.flatMap((e) => e.match(/cdrom:[a-z0-9_:]+/g) ?? [])) expect(recorded, name).toContain(name);
    // the series the brief names: outcome/action, latency, steps, retries, in flight, volumes, hung, broker, dead letters
    for (const series of [
      'cdrom:commands:rate5m',
      'cdrom:command_duration_seconds:p99_5m',
      'cdrom_step_duration_seconds_bucket',
      'cdrom_command_retries_total',
      'cdrom_commands_in_flight',
      'cdrom_active_volumes',
      'cdrom_hung_calls',
      'cdrom_broker_connected',
      'cdrom_dead_lettered_total',
    ])
      expect(exprs.some((e) => e.includes(series)), series).toBe(true);
  });
});
