"""The human study: sample pairs, serve an annotation page, measure agreement (docs/human_study.md)."""
