"""GOV.UK Notify compatibility: Notify's JWT check (`auth`), its body checks (`validation`), its objects (`objects`)."""
