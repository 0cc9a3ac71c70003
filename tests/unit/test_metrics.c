/* Unit tests for balancer/metrics.c: transition counts, which state changes
 * count as a detection, histogram buckets and percentiles over the fixed
 * window, HTTP status counts (odd statuses included) and the Prometheus text
 * it renders from a registry on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "metrics.h"

static uint64_t fake_now(void *ctx)
{
    return *(uint64_t *)ctx;
}

static struct registry_node node_at(uint64_t last_seen, uint64_t left, bool healthy)
{
    struct registry_node n;
    memset(&n, 0, sizeof n);
    snprintf(n.id, sizeof n.id, "n1");
    n.last_seen_ms = last_seen;
    n.left_rotation_ms = left;
    n.reported_healthy = healthy;
    return n;
}

static void test_transitions_and_detection(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    struct registry_node n = node_at(1000, 1400, true);

    metrics_note_change(m, &n, NODE_HEALTHY, NODE_SUSPECT);
    metrics_note_change(m, &n, NODE_SUSPECT, NODE_DOWN); /* silence: 400 ms */
    assert_int_equal(metrics_transitions(m, NODE_HEALTHY, NODE_SUSPECT), 1);
    assert_int_equal(metrics_transitions(m, NODE_SUSPECT, NODE_DOWN), 1);
    assert_int_equal(metrics_transitions(m, NODE_DOWN, NODE_HEALTHY), 0);
    assert_int_equal(metrics_transitions(m, (enum node_state)99, NODE_DOWN), 0);

    /* not detections: joining -> down, a node reporting itself unhealthy,
     * draining -> down, and out-of-range states */
    metrics_note_change(m, &n, NODE_JOINING, NODE_DOWN);
    struct registry_node sick = node_at(1000, 1000, false);
    metrics_note_change(m, &sick, NODE_HEALTHY, NODE_DOWN);
    metrics_note_change(m, &n, NODE_DRAINING, NODE_DOWN);
    metrics_note_change(m, &n, (enum node_state)42, NODE_DOWN);
    struct registry_node odd = node_at(2000, 1000, true); /* left before last seen */
    metrics_note_change(m, &odd, NODE_HEALTHY, NODE_DOWN);

    struct metrics_detection d;
    metrics_detection(m, &d);
    assert_int_equal(d.count, 1);
    assert_int_equal(d.window, 1);
    assert_true(d.p50_s > 0.399 && d.p50_s < 0.401);
    assert_true(d.p99_s > 0.399 && d.max_s < 0.401);
    /* 0.4 s falls in the "le 0.4" bucket (index 5) */
    assert_true(metrics_detect_bounds_s[5] == 0.4);
    assert_int_equal(d.buckets[5], 1);
    metrics_free(m);
    metrics_free(NULL);
}

static void test_percentiles_and_window(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    struct metrics_detection d;
    metrics_detection(m, &d);
    assert_int_equal(d.count, 0);
    assert_int_equal(d.window, 0);
    assert_true(d.p50_s == 0 && d.p99_s == 0);

    /* 1..100 ms: nearest-rank p50 = 50 ms, p99 = 99 ms */
    for (int i = 100; i >= 1; i--)
        metrics_note_detection(m, i / 1000.0);
    metrics_detection(m, &d);
    assert_int_equal(d.count, 100);
    assert_true(d.p50_s > 0.0499 && d.p50_s < 0.0501);
    assert_true(d.p99_s > 0.0989 && d.p99_s < 0.0991);
    assert_true(d.max_s > 0.0999 && d.max_s < 0.1001);

    /* the window is fixed: after many large samples the old ones are gone,
     * while the all-time count and buckets keep everything */
    for (int i = 0; i < 3 * METRICS_DETECT_WINDOW; i++)
        metrics_note_detection(m, 100.0); /* above the last bound: +Inf bucket */
    metrics_note_detection(m, -5); /* clamped to 0 */
    metrics_detection(m, &d);
    assert_int_equal(d.window, METRICS_DETECT_WINDOW);
    assert_int_equal(d.count, 100 + 3 * METRICS_DETECT_WINDOW + 1);
    assert_true(d.p50_s == 100.0);
    assert_int_equal(d.buckets[METRICS_DETECT_BUCKETS], 3 * METRICS_DETECT_WINDOW);
    metrics_free(m);
}

static void test_http_counts(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    metrics_note_http(m, 200);
    metrics_note_http(m, 200);
    metrics_note_http(m, 404);
    metrics_note_http(m, 0);
    metrics_note_http(m, 99999);
    assert_int_equal(metrics_http_count(m, 200), 2);
    assert_int_equal(metrics_http_count(m, 404), 1);
    assert_int_equal(metrics_http_count(m, 0), 0);
    assert_int_equal(metrics_http_count(m, 600), 0);
    metrics_free(m);
}

static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
    return 0;
}

static void on_change(void *ctx, const struct registry_node *n, enum node_state from,
                      enum node_state to)
{
    metrics_note_change(ctx, n, from, to);
}

static void test_render(void **state)
{
    (void)state;
    uint64_t now = 10000;
    struct registry_config cfg = {.interval_ms = 250, .fall = 3, .rise = 1, .forget_ms = 60000};
    struct registry *reg = registry_new(&cfg, fake_now, &now);
    assert_non_null(reg);
    struct metrics *m = metrics_new();
    assert_non_null(m);
    registry_on_change(reg, on_change, m);
    struct hb_msg r;
    memset(&r, 0, sizeof r);
    r.type = HB_REGISTER;
    snprintf(r.node_id, sizeof r.node_id, "web-1.a");
    r.boot_id = 7;
    snprintf(r.addr, sizeof r.addr, "127.0.0.1:7001");
    r.capacity = 200;
    assert_int_equal(registry_register(reg, &r), 0);
    struct hb_msg h;
    memset(&h, 0, sizeof h);
    h.type = HB_HEARTBEAT;
    snprintf(h.node_id, sizeof h.node_id, "web-1.a");
    h.boot_id = 7;
    h.healthy = true;
    h.sessions = 50;
    h.msgs_per_sec = 12.5;
    now += 100;
    assert_int_equal(registry_heartbeat(reg, &h), REGISTRY_OK);
    registry_note_pick(reg, registry_find(reg, "web-1.a"));
    /* reports: one accepted, one about no node (the quorum is off here) */
    assert_int_equal(registry_report(reg, "web-1.a", "10.0.0.1", REPORT_TLS, NULL),
                     REGISTRY_REPORT_OK);
    assert_int_equal(registry_report(reg, "nope", "10.0.0.1", REPORT_TLS, NULL),
                     REGISTRY_REPORT_UNKNOWN);
    now += 500;

    metrics_note_lookup(m, 0.00003);
    metrics_note_lookup(m, 5.0);
    metrics_note_http(m, 503);
    struct hb_server_stats st;
    memset(&st, 0, sizeof st);
    st.received = 9;
    st.rejected[HB_REJECT_PARSE] = 2;
    st.dropped = 2;
    struct metrics_sources src = {.reg = reg, .hb = &st, .version = "1.\"2\"", .uptime_s = 3.5};
    struct buf b;
    buf_init(&b);
    assert_int_equal(metrics_render(m, &src, &b), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    const char *t = (const char *)buf_head(&b);

    assert_true(has_line(t, "# TYPE berth_nodes gauge"));
    assert_true(has_line(t, "berth_nodes{state=\"healthy\"} 1"));
    assert_true(has_line(t, "berth_build_info{version=\"1.\\\"2\\\"\"} 1"));
    assert_true(has_line(t, "berth_uptime_seconds 3.500"));
    assert_true(has_line(t, "berth_heartbeats_received_total 9"));
    assert_true(has_line(t, "berth_heartbeats_dropped_total 2"));
    assert_true(has_line(t, "berth_heartbeats_rejected_total{reason=\"parse\"} 2"));
    assert_true(has_line(t, "berth_heartbeats_rejected_total{reason=\"handshake\"} 0"));
    assert_true(has_line(t, "# TYPE berth_lookup_duration_seconds histogram"));
    assert_true(has_line(t, "berth_lookup_duration_seconds_bucket{le=\"2.5e-05\"} 0"));
    assert_true(has_line(t, "berth_lookup_duration_seconds_bucket{le=\"5e-05\"} 1"));
    assert_true(has_line(t, "berth_lookup_duration_seconds_bucket{le=\"0.1\"} 1"));
    assert_true(has_line(t, "berth_lookup_duration_seconds_bucket{le=\"+Inf\"} 2"));
    assert_true(has_line(t, "berth_lookup_duration_seconds_count 2"));
    assert_true(has_line(t, "berth_detection_latency_seconds_count 0"));
    assert_true(has_line(t, "berth_http_requests_total{code=\"503\"} 1"));
    assert_true(has_line(t, "berth_node_state_transitions_total{from=\"joining\",to=\"healthy\"} 1"));
    assert_true(has_line(t, "berth_picks_total{node=\"web-1.a\"} 1"));
    assert_true(has_line(t, "berth_node_sessions{node=\"web-1.a\"} 50"));
    assert_true(has_line(t, "berth_node_capacity{node=\"web-1.a\"} 200"));
    assert_true(has_line(t, "berth_node_load_ratio{node=\"web-1.a\"} 0.25"));
    assert_true(has_line(t, "berth_node_messages_per_second{node=\"web-1.a\"} 12.5"));
    assert_true(has_line(t, "berth_node_last_heartbeat_age_seconds{node=\"web-1.a\"} 0.5"));
    assert_true(has_line(t, "berth_node_in_rotation{node=\"web-1.a\"} 1"));
    assert_true(has_line(t, "berth_nodes{state=\"ejected\"} 0"));
    assert_true(has_line(t, "# TYPE berth_reports_total counter"));
    assert_true(has_line(t, "berth_reports_total{result=\"accepted\"} 1"));
    assert_true(has_line(t, "berth_reports_total{result=\"unknown_node\"} 1"));
    assert_true(has_line(t, "berth_reports_total{result=\"rate_limited\"} 0"));
    assert_true(has_line(t, "berth_report_ejections_total 0"));
    assert_true(has_line(t, "berth_report_ejections_capped_total 0"));
    /* every line is a comment or "name{labels} value" */
    for (const char *p = t; *p; p = strchr(p, '\n') + 1) {
        assert_true(*p == '#' || (*p >= 'a' && *p <= 'z'));
        assert_non_null(strchr(p, '\n'));
    }
    buf_release(&b);
    metrics_free(m);
    registry_free(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transitions_and_detection),
        cmocka_unit_test(test_percentiles_and_window),
        cmocka_unit_test(test_http_counts),
        cmocka_unit_test(test_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
