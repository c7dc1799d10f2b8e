using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Transport.Winsock;
using Transport.Winsock.Listener;
using Transport.Winsock.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the Winsock reuse transport with a host's services.</summary>
public static class WinsockTransportServiceCollectionExtensions
{
    /// <summary>
    /// Registers the Winsock reuse transport so Kestrel binds every TCP <see cref="System.Net.IPEndPoint"/>
    /// through it; other endpoint types fall through to Kestrel's own transports, in whichever order the
    /// host calls this and <c>UseKestrel</c>/<c>UseKestrelCore</c>. Also registers
    /// <see cref="WinsockTransportCounters"/>. Options bind from the configuration section
    /// <c>Kestrel:Transport:Winsock</c> (e.g. <c>Kestrel__Transport__Winsock__PendingAccepts=32</c>), then
    /// <paramref name="configure"/> applies on top; the result is validated when the host is built.
    /// </summary>
    /// <param name="services">The host's services.</param>
    /// <param name="configure">Sets <see cref="WinsockTransportOptions"/>; may be <see langword="null"/>.</param>
    /// <returns>The same <paramref name="services"/>, for chaining.</returns>
    public static IServiceCollection AddWinsockReuseTransport(this IServiceCollection services, Action<WinsockTransportOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);

        var options = services.AddOptions<WinsockTransportOptions>().ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IConfigureOptions<WinsockTransportOptions>, WinsockTransportOptionsSetup>());
        if (configure is not null)
        {
            options.Configure(configure);
        }

        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<WinsockTransportOptions>, WinsockTransportOptionsValidator>());
        services.TryAddSingleton<WinsockTransportCounters>();
        services.TryAddSingleton<Transport.Winsock.Diagnostics.WinsockTransportMeter>();
        // Kestrel registers its Sockets transport with TryAddSingleton, so a host that registers this
        // transport before UseKestrel/UseKestrelCore would lose it, and with it Unix domain sockets and
        // file handles. Where no transport is registered yet, register it here, as Kestrel would have;
        // where one is (Kestrel's, or one the host chose), leave that alone.
        // (Keyed registrations do not count: Kestrel's TryAddSingleton ignores them too.)
        if (!services.Any(static d => d.ServiceType == typeof(IConnectionListenerFactory) && !d.IsKeyedService))
        {
            services.AddSingleton<IConnectionListenerFactory, SocketTransportFactory>();
        }

        // Kestrel asks the most recently registered transport first, so this one claims TCP endpoints
        // ahead of the Sockets transport.
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IConnectionListenerFactory, WinsockTransportFactory>());
        return services;
    }
}
