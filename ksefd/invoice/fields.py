"""What the common FA(3) fields mean, for messages an accountant can act on (issue #15 point 5): "P_2" tells a
person nothing, "P_2 (invoice number / numer faktury)" does. English first, then the Polish name the ERP and
the Ministry's documentation use (the FA(3) schema's own documentation, schemat_FA(3)_v1-0E.xsd).

Only the fields an ERP export commonly gets wrong are listed; others are named as they are.
"""

from __future__ import annotations

from ksefd import i18n
from ksefd.i18n import N_, translate

# element -> (English meaning, Polish name)
MEANINGS: dict[str, tuple[str, str]] = {
    "Faktura": ("the invoice", "faktura"),
    "Naglowek": ("header", "nagłówek"),
    "KodFormularza": ("form code", "kod formularza"),
    "WariantFormularza": ("form variant", "wariant formularza"),
    "DataWytworzeniaFa": ("date and time the file was created", "data wytworzenia faktury"),
    "SystemInfo": ("name of the issuing system", "nazwa systemu"),
    "Podmiot1": ("seller", "sprzedawca, podatnik"),
    "Podmiot2": ("buyer", "nabywca"),
    "Podmiot3": ("third party", "podmiot trzeci"),
    "PodmiotUpowazniony": ("authorised party", "podmiot upoważniony"),
    "DaneIdentyfikacyjne": ("identification data", "dane identyfikacyjne"),
    "NIP": ("tax ID", "NIP"),
    "NrVatUE": ("EU VAT number", "numer VAT UE"),
    "KodUE": ("EU country code of the VAT number", "kod kraju UE"),
    "NrID": ("foreign tax ID", "identyfikator podatkowy"),
    "BrakID": ("no tax ID", "brak identyfikatora"),
    "Nazwa": ("name", "nazwa"),
    "Adres": ("address", "adres"),
    "AdresKoresp": ("correspondence address", "adres korespondencyjny"),
    "AdresL1": ("address line 1", "adres, linia 1"),
    "AdresL2": ("address line 2", "adres, linia 2"),
    "KodKraju": ("country code", "kod kraju"),
    "DaneKontaktowe": ("contact details", "dane kontaktowe"),
    "JST": ("local government unit flag", "jednostka samorządu terytorialnego"),
    "GV": ("VAT group member flag", "członek grupy VAT"),
    "Fa": ("invoice data", "dane faktury"),
    "KodWaluty": ("currency code", "kod waluty"),
    "P_1": ("issue date", "data wystawienia"),
    "P_1M": ("place of issue", "miejsce wystawienia"),
    "P_2": ("invoice number", "numer faktury"),
    "P_6": ("date of supply or of completing the service", "data dostawy lub wykonania usługi"),
    "OkresFa": ("period the invoice covers", "okres, którego dotyczy faktura"),
    "P_13_1": ("net amount at the 23% or 22% rate", "suma wartości sprzedaży netto, stawka podstawowa"),
    "P_14_1": ("VAT at the 23% or 22% rate", "kwota podatku, stawka podstawowa"),
    "P_14_1W": ("VAT at the 23% or 22% rate in PLN", "kwota podatku w PLN, stawka podstawowa"),
    "P_13_2": ("net amount at the 8% or 7% rate", "suma wartości sprzedaży netto, stawka obniżona pierwsza"),
    "P_14_2": ("VAT at the 8% or 7% rate", "kwota podatku, stawka obniżona pierwsza"),
    "P_14_2W": ("VAT at the 8% or 7% rate in PLN", "kwota podatku w PLN, stawka obniżona pierwsza"),
    "P_13_3": ("net amount at the 5% rate", "suma wartości sprzedaży netto, stawka obniżona druga"),
    "P_14_3": ("VAT at the 5% rate", "kwota podatku, stawka obniżona druga"),
    "P_14_3W": ("VAT at the 5% rate in PLN", "kwota podatku w PLN, stawka obniżona druga"),
    "P_13_4": ("net amount at the taxi flat rate", "suma wartości sprzedaży netto, ryczałt dla taksówek"),
    "P_14_4": ("VAT at the taxi flat rate", "kwota podatku, ryczałt dla taksówek"),
    "P_13_5": ("net amount under the OSS procedure", "suma wartości sprzedaży netto, procedura szczególna"),
    "P_14_5": ("VAT under the OSS procedure", "kwota podatku, procedura szczególna"),
    "P_13_6_1": ("net amount at 0% (domestic)", "sprzedaż ze stawką 0% (krajowa)"),
    "P_13_6_2": ("net amount at 0% (intra-EU supply)", "sprzedaż ze stawką 0% (WDT)"),
    "P_13_6_3": ("net amount at 0% (export)", "sprzedaż ze stawką 0% (eksport)"),
    "P_13_7": ("VAT-exempt sales", "sprzedaż zwolniona"),
    "P_13_8": ("sales outside Poland", "sprzedaż poza terytorium kraju"),
    "P_13_9": ("services under art. 100", "świadczenie usług z art. 100"),
    "P_13_10": ("reverse-charge sales", "odwrotne obciążenie"),
    "P_13_11": ("margin-scheme sales", "procedura marży"),
    "P_15": ("total amount due (gross)", "kwota należności ogółem"),
    "RodzajFaktury": ("invoice type", "rodzaj faktury"),
    "Adnotacje": ("annotations", "adnotacje"),
    "P_16": ("cash accounting flag", "metoda kasowa"),
    "P_17": ("self-billing flag", "samofakturowanie"),
    "P_18": ("reverse-charge flag", "odwrotne obciążenie"),
    "P_18A": ("split-payment flag", "mechanizm podzielonej płatności"),
    "Zwolnienie": ("VAT exemption", "zwolnienie"),
    "NoweSrodkiTransportu": ("new means of transport", "nowe środki transportu"),
    "P_23": ("simplified triangular transaction flag", "procedura uproszczona"),
    "PMarzy": ("margin scheme", "procedura marży"),
    "FaWiersz": ("invoice line", "wiersz faktury"),
    "NrWierszaFa": ("line number", "numer wiersza"),
    "P_7": ("name of the goods or service", "nazwa towaru lub usługi"),
    "P_8A": ("unit of measure", "miara"),
    "P_8B": ("quantity", "ilość"),
    "P_9A": ("unit net price", "cena jednostkowa netto"),
    "P_9B": ("unit gross price", "cena jednostkowa brutto"),
    "P_10": ("discount", "rabat"),
    "P_11": ("line net value", "wartość sprzedaży netto"),
    "P_11A": ("line gross value", "wartość sprzedaży brutto"),
    "P_12": ("VAT rate", "stawka podatku"),
    "DaneFaKorygowanej": ("data of the corrected invoice", "dane faktury korygowanej"),
    "PrzyczynaKorekty": ("reason for the correction", "przyczyna korekty"),
    "TypKorekty": ("type of correction", "typ korekty"),
    "NrFaKorygowanej": ("number of the corrected invoice", "numer faktury korygowanej"),
    "NrKSeFFaKorygowanej": ("KSeF number of the corrected invoice", "numer KSeF faktury korygowanej"),
    "Platnosc": ("payment", "płatność"),
    "TerminPlatnosci": ("payment due date", "termin płatności"),
    "FormaPlatnosci": ("payment method", "forma płatności"),
    "RachunekBankowy": ("bank account", "rachunek bankowy"),
    "NrRB": ("bank account number", "numer rachunku"),
    "Stopka": ("footer", "stopka"),
    "Zalacznik": ("attachment", "załącznik"),
}

# What a value of a simple type of the schema must look like (the libxml2 message names the type).
TYPE_FORMATS: dict[str, str] = {
    "TData": N_("a date written as YYYY-MM-DD (e.g. 2026-02-15)"),
    "TDataT": N_("a date written as YYYY-MM-DD (e.g. 2026-02-15), between 2006-01-01 and 2050-01-01"),
    "TDataU": N_("a date written as YYYY-MM-DD (e.g. 2026-02-15), between 1990-01-01 and 2050-01-01"),
    "TDataCzas": N_("a date and time written as YYYY-MM-DDThh:mm:ss with a time zone (e.g. 2026-02-15T10:30:00Z), "
                    "not before 2021-10-01"),
    "TKwotowy": N_("an amount with a dot as the decimal separator and at most 2 decimal places (e.g. 1234.56)"),
    "TKwotowy2": N_("an amount with a dot as the decimal separator and at most 8 decimal places (e.g. 12.345678)"),
    "TIlosci": N_("a quantity with a dot as the decimal separator and at most 6 decimal places (e.g. 2.5)"),
    "TNrNIP": N_("a NIP: 10 digits without dashes or spaces"),
    "TZnakowy": N_("text of 1 to 256 characters"),
    "TZnakowy50": N_("text of 1 to 50 characters"),
    "TZnakowy20": N_("text of 1 to 20 characters"),
    "TNaturalny": N_("a whole number greater than 0"),
    "TKodWaluty": N_("a three-letter ISO 4217 currency code (e.g. PLN, EUR)"),
    "TKodKraju": N_("a two-letter ISO 3166 country code (e.g. PL, DE)"),
}

# Sections whose name tells where in the invoice a field is (the nearest one is named).
SECTIONS = ("FaWiersz", "Podmiot1", "Podmiot2", "Podmiot3", "PodmiotUpowazniony", "Platnosc", "Adnotacje",
            "DaneFaKorygowanej", "Zalacznik", "Stopka", "Naglowek")


def describe(name: str) -> str:
    """`P_2 (invoice number / numer faktury)`, or the bare name for a field not in the table; in Polish
    (the config's language, issue #14) `P_2 (numer faktury)`: the Ministry's own name is enough."""
    meaning = MEANINGS.get(name)
    if meaning is None:
        return name
    english, polish = meaning
    if i18n.current() == "pl":
        return f"{name} ({polish})"
    return f"{name} ({english} / {polish})" if english.lower() != polish.lower() else f"{name} ({english})"


def type_format(type_name: str) -> str | None:
    found = TYPE_FORMATS.get(type_name)
    return translate(found) if found is not None else None
