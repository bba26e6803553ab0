package record

// MaxTopicLength is Kafka's limit on a topic name's length.
const MaxTopicLength = 249

// ValidateTopic checks a topic name against Kafka's rules: 1 to 249
// characters of [a-zA-Z0-9._-], and neither "." nor "..".
func ValidateTopic(topic string) error {
	switch {
	case topic == "":
		return Errorf(ReasonInvalid, "invalid topic name: it is empty")
	case topic == "." || topic == "..":
		return Errorf(ReasonInvalid, "invalid topic name %q: \".\" and \"..\" are not allowed", topic)
	case len(topic) > MaxTopicLength:
		return Errorf(ReasonInvalid, "invalid topic name: %d characters, the limit is %d", len(topic), MaxTopicLength)
	}
	for i, c := range topic {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return Errorf(ReasonInvalid, "invalid topic name %q: character %q at byte %d; allowed are a-z, A-Z, 0-9, '.', '_' and '-'", topic, c, i)
		}
	}
	return nil
}
