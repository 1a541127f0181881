/* scenario_file.c - scenario YAML to a flat list of turns (libyaml). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../util/vec.h"
#include "scenario.h"

static const char *scalar(yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static yaml_node_t *map_get(yaml_document_t *doc, yaml_node_t *map, const char *key) {
    if (!map || map->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *k = scalar(yaml_document_get_node(doc, p->key));
        if (k && !strcmp(k, key)) return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

static int add_messages(yaml_document_t *doc, yaml_node_t *list, const char *node, scenario *s, char *err,
                        size_t errlen) {
    if (!list || list->type != YAML_SEQUENCE_NODE) {
        snprintf(err, errlen, "messages must be a list of strings");
        return -1;
    }
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top; it++) {
        const char *msg = scalar(yaml_document_get_node(doc, *it));
        if (!msg) {
            snprintf(err, errlen, "message %zu is not a string", s->n_turns + 1);
            return -1;
        }
        s->turns = dc_xrealloc(s->turns, (s->n_turns + 1) * sizeof *s->turns);
        s->turns[s->n_turns].node = node ? dc_xstrdup(node) : NULL;
        s->turns[s->n_turns].message = dc_xstrdup(msg);
        s->n_turns++;
    }
    return 0;
}

int scenario_parse(const char *text, size_t len, scenario *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        snprintf(err, errlen, "cannot initialize the YAML parser");
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int rc = -1;
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errlen, "YAML error at line %zu: %s", parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "unknown");
        yaml_parser_delete(&parser);
        return -1;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || root->type != YAML_MAPPING_NODE) {
        snprintf(err, errlen, "a scenario is a mapping with messages or locations");
        goto done;
    }
    const char *name = scalar(map_get(&doc, root, "name"));
    const char *user = scalar(map_get(&doc, root, "user_id"));
    s->name = dc_xstrdup(name ? name : "scenario");
    s->user_id = user ? dc_xstrdup(user) : NULL;
    yaml_node_t *msgs = map_get(&doc, root, "messages");
    yaml_node_t *locs = map_get(&doc, root, "locations");
    if (msgs) {
        if (add_messages(&doc, msgs, NULL, s, err, errlen)) goto done;
    } else if (locs && locs->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = locs->data.sequence.items.start; it < locs->data.sequence.items.top; it++) {
            yaml_node_t *loc = yaml_document_get_node(&doc, *it);
            const char *node = scalar(map_get(&doc, loc, "node"));
            if (!node) {
                snprintf(err, errlen, "every location needs a node");
                goto done;
            }
            if (add_messages(&doc, map_get(&doc, loc, "messages"), node, s, err, errlen)) goto done;
        }
    } else {
        snprintf(err, errlen, "a scenario needs messages or locations");
        goto done;
    }
    if (s->n_turns == 0) {
        snprintf(err, errlen, "the scenario has no messages");
        goto done;
    }
    rc = 0;
done:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc) scenario_free(s);
    return rc;
}

int scenario_load(const char *path, scenario *s, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s", path);
        return -1;
    }
    strbuf text = {0};
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) strbuf_append(&text, buf, n);
    fclose(f);
    int rc = scenario_parse(text.s ? text.s : "", text.n, s, err, errlen);
    strbuf_free(&text);
    return rc;
}

void scenario_free(scenario *s) {
    for (size_t i = 0; i < s->n_turns; i++) {
        free(s->turns[i].node);
        free(s->turns[i].message);
    }
    free(s->turns);
    free(s->name);
    free(s->user_id);
    memset(s, 0, sizeof *s);
}
