module github.com/spillway/spillway/services/ingest

go 1.26
