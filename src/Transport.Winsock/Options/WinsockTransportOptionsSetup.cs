using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Transport.Winsock.Options;

/// <summary>
/// Binds <see cref="WinsockTransportOptions"/> from the host's configuration section
/// <c>Kestrel:Transport:Winsock</c>, when the host has configuration. Runs before any options set in
/// code, so code wins.
/// </summary>
internal sealed class WinsockTransportOptionsSetup(IServiceProvider services) : IConfigureOptions<WinsockTransportOptions>
{
    public const string SectionPath = "Kestrel:Transport:Winsock";

    public void Configure(WinsockTransportOptions options)
        => services.GetService<IConfiguration>()?.GetSection(SectionPath).Bind(options);
}
