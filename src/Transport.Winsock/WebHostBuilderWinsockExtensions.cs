using Microsoft.Extensions.DependencyInjection;
using Transport.Winsock;

namespace Microsoft.AspNetCore.Hosting;

/// <summary>Switches a web host's Kestrel TCP endpoints to the Winsock reuse transport.</summary>
public static class WebHostBuilderWinsockExtensions
{
    /// <summary>
    /// Makes Kestrel bind every TCP endpoint through the Winsock reuse transport with default options.
    /// Unix domain sockets, named pipes and file handles stay on Kestrel's own transports.
    /// </summary>
    /// <param name="hostBuilder">The web host builder, e.g. <c>WebApplicationBuilder.WebHost</c>.</param>
    /// <returns>The same <paramref name="hostBuilder"/>, for chaining.</returns>
    public static IWebHostBuilder UseWinsockReuseTransport(this IWebHostBuilder hostBuilder)
        => hostBuilder.UseWinsockReuseTransport(static _ => { });

    /// <summary>
    /// Makes Kestrel bind every TCP endpoint through the Winsock reuse transport, with options.
    /// </summary>
    /// <param name="hostBuilder">The web host builder, e.g. <c>WebApplicationBuilder.WebHost</c>.</param>
    /// <param name="configure">Sets <see cref="WinsockTransportOptions"/>; checked when the host starts.</param>
    /// <returns>The same <paramref name="hostBuilder"/>, for chaining.</returns>
    public static IWebHostBuilder UseWinsockReuseTransport(this IWebHostBuilder hostBuilder, Action<WinsockTransportOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(hostBuilder);
        ArgumentNullException.ThrowIfNull(configure);
        return hostBuilder.ConfigureServices(services => services.AddWinsockReuseTransport(configure));
    }
}
