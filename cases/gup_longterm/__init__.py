"""gup_longterm: longterm GUP pins of file mappings (tools/testing/selftests/mm/gup_longterm.c)."""
